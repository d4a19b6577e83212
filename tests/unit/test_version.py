"""`oignons-mail --version`: debian/changelog is the one source (pyproject.toml and the package metadata follow it)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from debian.changelog import Changelog

import oignons_mail
from oignons_mail.cli import main

REPO = Path(__file__).resolve().parents[2]


def changelog_version() -> str:
    with (REPO / "debian" / "changelog").open(encoding="utf-8") as handle:
        return str(Changelog(handle).upstream_version)


def test_version_is_the_changelog_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr() == (f"oignons-mail {changelog_version()}\n", "")


def test_pyproject_takes_its_version_from_the_module() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "oignons_mail.__version__"}


@pytest.mark.parametrize(
    ("first_line", "version"),
    [
        ("oignons-mail (0.2.0) unstable; urgency=medium", "0.2.0"),
        ("oignons-mail (1:0.3.1-2) bookworm; urgency=low", "0.3.1"),
        ("oignons-mail (0.4.0+site1) unstable; urgency=medium", "0.4.0+site1"),
    ],
)
def test_version_of_a_changelog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_line: str, version: str) -> None:
    changelog = tmp_path / "changelog"
    changelog.write_text(first_line + "\n\n  * Changes.\n", encoding="utf-8")
    monkeypatch.setattr(oignons_mail, "_CHECKOUT_CHANGELOG", changelog)
    assert oignons_mail.__version__ == version


def test_installed_copy_reads_the_package_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oignons_mail, "_CHECKOUT_CHANGELOG", tmp_path / "no-changelog")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"oignons-mail": "7.8.9"}[name])
    assert oignons_mail.__version__ == "7.8.9"
