"""Fixtures of the system tests: the built packages and real Debian systems."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DIST = Path(__file__).resolve().parents[2] / "dist"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def dist() -> Path:
    if os.geteuid() != 0:
        pytest.fail("the system tests install packages into chroots: run them as root (make check)")
    if not list(DIST.glob("*.deb")):
        pytest.fail(f"no .deb in {DIST}: run `make deb` first (make check does)")
    return DIST


def package_file(dist: Path, package: str) -> Path:
    matches = sorted(dist.glob(f"{package}_*_all.deb"))
    if len(matches) != 1:
        pytest.fail(f"expected one {package}_*_all.deb in {dist}, found {[m.name for m in matches]}")
    return matches[0]
