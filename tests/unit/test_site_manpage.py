"""oignons-mail-site(5) (manpage.py): the site file's format, written from schema.SCHEMA, which the parser reads too."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from oignons_mail import schema
from oignons_mail.manpage import example_site, main, roff_text, site_manpage
from oignons_mail.site import parse_site

REPO = Path(__file__).resolve().parents[2]


def page() -> str:
    return site_manpage("1.2.3", "2026-11-26")


def test_header_and_sections() -> None:
    lines = page().splitlines()
    assert lines[0] == '.TH OIGNONS-MAIL-SITE 5 "2026-11-26" "oignons-mail 1.2.3" "File Formats"'
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "TABLES", "EXAMPLE", "FILES", "SEE ALSO"):
        assert f".SH {section}" in lines


def test_every_table_and_key_is_described() -> None:
    lines = page().splitlines()
    described = 0
    for table in schema.SCHEMA:
        header = f"[[{table.path}]]" if table.array else f"[{table.path}]"
        assert f".SS {roff_text(header)}" in lines, table.path
        start = lines.index(f".SS {roff_text(header)}")
        for key in table.keys:
            given = "required" if key.required else f"default: {key.default}"
            heading = f"\\fB{roff_text(key.name)}\\fR = \\fI{roff_text(key.kind)}\\fR ({roff_text(given)})"
            at = lines.index(heading, start)
            assert lines[at - 1] == ".TP"
            assert lines[at + 1] == roff_text(key.doc)
            assert lines[at + 3] == f"Rule: {roff_text(key.rule)}."
            assert lines[at + 5].startswith(f"Example: {roff_text(key.name)} = ")
            described += 1
    assert described == sum(len(table.keys) for table in schema.SCHEMA) >= 55


def test_the_default_site_s_keys_are_on_the_page() -> None:
    """Every key of the default site is in the schema, and so on the page (optional ones may be left out there)."""
    with (REPO / "sites" / "nos-oignons.toml").open("rb") as file:
        data = tomllib.load(file)

    def keys(table: dict[str, object], path: str) -> set[str]:
        found = set()
        for name, value in table.items():
            if isinstance(value, dict) and f"{path}.{name}".strip(".") in {t.path for t in schema.SCHEMA}:
                found |= keys(value, f"{path}.{name}".strip("."))
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    found |= keys(item, f"{path}.{name}".strip("."))
            else:
                found.add(f"{path}.{name}")
        return found

    described = {f"{table.path}.{key.name}" for table in schema.SCHEMA for key in table.keys}
    assert keys(data, "") <= described
    assert len(keys(data, "")) >= 55


def test_the_example_validates() -> None:
    """The page's example has every key with its example value, and the parser takes it."""
    text = example_site()
    site = parse_site(tomllib.loads(text), "example.toml")
    assert site.relay.node_pins[0][0] == "marcuse"
    assert f"\n.nf\n.RS 4\n{roff_text(text)}\n.RE\n.fi\n" in page()


def test_main_writes_section_5(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--section", "5", "1.2.3", "2026-11-26"]) == 0
    assert capsys.readouterr() == (page(), "")


# groff and man check this page beside oignons-mail(1): tests/unit/test_manpage.py.
