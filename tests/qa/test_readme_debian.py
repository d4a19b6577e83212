"""Each binary package's README.Debian and the documentation the oignons-mail package ships (static)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from debian.deb822 import Deb822

TOP = Path(__file__).resolve().parents[2]
SECTIONS = ("What it does", "Where its files are", "How to undo", "The full documentation")


def binary_packages() -> list[str]:
    with (TOP / "debian" / "control").open(encoding="utf-8") as handle:
        return [paragraph["Package"] for paragraph in Deb822.iter_paragraphs(handle) if "Package" in paragraph]


def shipped_docs() -> list[str]:
    return (TOP / "debian" / "oignons-mail.docs").read_text(encoding="utf-8").split()


def test_every_binary_package_is_covered() -> None:
    assert set(binary_packages()) == {"oignons-mail", "oignons-mail-smarthost", "oignons-mail-relay"}


@pytest.mark.parametrize("package", binary_packages())
def test_readme_debian(package: str) -> None:
    text = (TOP / "debian" / f"{package}.README.Debian").read_text(encoding="utf-8")
    headings = re.findall(r"^(.+)\n-+$", text, flags=re.MULTILINE)
    assert [heading for heading in headings if heading in SECTIONS] == list(SECTIONS)
    # debian/ names no site: the same text goes into every association's packages.
    assert "nos-oignons" not in text.lower()
    assert "bulbe" not in text
    # The documents it points to are those the oignons-mail package ships.
    named = set(re.findall(r"\b([a-z][a-z-]*\.md)\b", text))
    assert named
    assert named <= {Path(path).name for path in shipped_docs()}
    assert all(len(line) <= 80 for line in text.splitlines())


def test_shipped_docs_exist() -> None:
    assert shipped_docs()
    for path in shipped_docs():
        assert (TOP / path).is_file(), path
