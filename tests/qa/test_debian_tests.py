"""debian/tests/control against what `make sbuild` runs it with (autopkgtest-virt-unshare).

Fast and static: the tests themselves run in `make sbuild` (docs/testing.md, "Debian QA").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from debian.deb822 import Deb822

TOP = Path(__file__).resolve().parents[2]
TESTS = TOP / "debian" / "tests"
# Restrictions a test may use here.  isolation-container and isolation-machine
# are not provided by the unshare virtualisation server: such a test would be
# skipped, which `make sbuild` counts as a failure.
ALLOWED_RESTRICTIONS = {"allow-stderr", "breaks-testbed", "needs-root"}


def paragraphs(path: Path) -> list[Deb822]:
    with path.open(encoding="utf-8") as handle:
        return [paragraph for paragraph in Deb822.iter_paragraphs(handle) if paragraph]


def binary_packages() -> set[str]:
    return {paragraph["Package"] for paragraph in paragraphs(TOP / "debian" / "control") if "Package" in paragraph}


def words(value: str) -> list[str]:
    return [word for word in re.split(r"[\s,]+", value) if word]


TEST_PARAGRAPHS = paragraphs(TESTS / "control")


def depends(paragraph: Deb822) -> set[str]:
    return {word.split("(")[0].strip() for word in paragraph.get("Depends", "").split(",") if word.strip()}


@pytest.mark.parametrize("paragraph", TEST_PARAGRAPHS, ids=lambda p: " ".join(words(p.get("Tests", "?"))))
def test_each_test_is_an_executable_script(paragraph: Deb822) -> None:
    assert "Tests" in paragraph, "only Tests: paragraphs (no Test-Command)"
    for name in words(paragraph["Tests"]):
        script = TESTS / name
        assert script.is_file(), f"debian/tests/{name} is missing"
        assert os.access(script, os.X_OK), f"debian/tests/{name} is not executable"


@pytest.mark.parametrize("paragraph", TEST_PARAGRAPHS, ids=lambda p: " ".join(words(p.get("Tests", "?"))))
def test_restrictions_are_ones_the_unshare_testbed_provides(paragraph: Deb822) -> None:
    restrictions = set(words(paragraph.get("Restrictions", "")))
    assert restrictions <= ALLOWED_RESTRICTIONS, f"not provided by autopkgtest-virt-unshare: {restrictions}"


@pytest.mark.parametrize("paragraph", TEST_PARAGRAPHS, ids=lambda p: " ".join(words(p.get("Tests", "?"))))
def test_a_test_installs_one_of_the_conflicting_packages(paragraph: Deb822) -> None:
    ours = depends(paragraph) & binary_packages()
    assert "@" not in depends(paragraph), "@ installs every binary package, and ours conflict"
    assert len(ours) == 1, f"one of {sorted(binary_packages())} per test, not {sorted(ours)}"


def test_every_binary_package_is_tested() -> None:
    tested = set().union(*(depends(paragraph) for paragraph in TEST_PARAGRAPHS))
    assert binary_packages() <= tested
