"""Golden trees: render tests/golden/<case>/in/site.toml and compare with out/, file by file.

OIGNONS_MAIL_UPDATE_GOLDEN=1 rewrites out/ instead of comparing, and copies
sites/nos-oignons.toml into the nos-oignons case first (tests/golden/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oignons_mail.render import render
from oignons_mail.site import load_site
from oignons_mail.writer import diff_tree, write_tree

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
UPDATE = os.environ.get("OIGNONS_MAIL_UPDATE_GOLDEN") == "1"
CASES = sorted(path.name for path in GOLDEN.iterdir() if (path / "in" / "site.toml").is_file())
# The case that is the association's own site: a copy of the real site file.
REAL_CASE = "nos-oignons"
REAL_SITE = REPO / "sites" / "nos-oignons.toml"
REFRESH = "OIGNONS_MAIL_UPDATE_GOLDEN=1 /usr/bin/python3 -m pytest tests/unit/test_golden.py"


def _tree(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}


def test_the_cases_are_there() -> None:
    assert {"nos-oignons", "other-site"} <= set(CASES)


def test_the_real_case_is_a_copy_of_the_real_site() -> None:
    copy = GOLDEN / REAL_CASE / "in" / "site.toml"
    if UPDATE:
        copy.write_bytes(REAL_SITE.read_bytes())
    assert copy.read_bytes() == REAL_SITE.read_bytes(), f"{copy.relative_to(REPO)} is out of date: run {REFRESH}"


@pytest.mark.parametrize("case", CASES)
def test_golden_tree(case: str) -> None:
    if UPDATE and case == REAL_CASE:
        (GOLDEN / case / "in" / "site.toml").write_bytes(REAL_SITE.read_bytes())
    files = render(load_site(GOLDEN / case / "in" / "site.toml"))
    out = GOLDEN / case / "out"
    if UPDATE:
        write_tree(files, out)
        return
    difference = diff_tree(files, out)
    hint = f"golden tree {out.relative_to(REPO)} differs from the rendering; if the change is intended, run {REFRESH}"
    assert out.is_dir(), hint
    assert sorted(files) == sorted(_tree(out)), f"{hint}\n{difference}"
    for relative, text in sorted(files.items()):
        expected = (out / relative).read_text(encoding="utf-8")
        assert text == expected, f"{relative}: {hint}\n{difference}"
