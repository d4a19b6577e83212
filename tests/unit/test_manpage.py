"""The manual page (src/oignons_mail/manpage.py): written from the argparse definitions."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from oignons_mail.cli import parser
from oignons_mail.manpage import main, manpage, roff_text, site_manpage


def page() -> str:
    return manpage(parser(), "1.2.3", "2026-11-26")


def test_header_and_sections() -> None:
    lines = page().splitlines()
    assert lines[0] == '.TH OIGNONS-MAIL 1 "2026-11-26" "oignons-mail 1.2.3" "User Commands"'
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "SEE ALSO"):
        assert f".SH {section}" in lines


def test_every_command_and_option_is_described() -> None:
    text = page()
    subparsers = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {
        "validate",
        "render",
        "pin",
        "dns",
        "release",
        "build",
        "repo",
        "fleet",
        "status",
    }
    for name, command in subparsers.choices.items():
        assert f"\n.SS {name}\n{roff_text(command.description or '')}\n" in text
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"\\fB{roff_text(option)}\\fR" in text, (name, option)
    assert ".TP\n\\fB\\-\\-version\\fR\nprint the version of oignons\\-mail and exit\n" in text
    # %(default)s is expanded as in --help.
    assert "(default: dist/repo)" in text


@pytest.mark.parametrize(
    ("text", "roff"),
    [
        ("a-b", "a\\-b"),
        ("back\\slash", "back\\eslash"),
        (".starts with a dot", "\\&.starts with a dot"),
        ("'quote", "\\&'quote"),
    ],
)
def test_roff_text(text: str, roff: str) -> None:
    assert roff_text(text) == roff


def test_main_writes_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["1.2.3", "2026-11-26"]) == 0
    assert capsys.readouterr() == (page(), "")


# Both pages: oignons-mail(1) and oignons-mail-site(5).
PAGES = [
    pytest.param(page, id="oignons-mail.1"),
    pytest.param(lambda: site_manpage("1.2.3", "2026-11-26"), id="site.5"),
]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("written", PAGES)
def test_groff_has_no_warning(written: Callable[[], str]) -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"],
        input=written(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("written", PAGES)
def test_man_renders_it_without_warning(tmp_path: Path, written: Callable[[], str]) -> None:
    """As lintian checks a page (manpage-has-errors-from-man)."""
    path = tmp_path / "page"
    path.write_text(written(), encoding="utf-8")
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stderr) == (0, "")
