"""oignons-mail: Nos oignons' Postfix setup as Debian packages, built from a site file."""

from __future__ import annotations

import re
from pathlib import Path

# In a checkout, debian/changelog beside src/ is the one source of the version;
# pyproject.toml reads __version__ from here (setuptools' dynamic "attr"), so the
# installed package's metadata carries the same version, which an installed
# copy reads back.
_CHECKOUT_CHANGELOG = Path(__file__).resolve().parents[2] / "debian" / "changelog"
_CHANGELOG_VERSION = re.compile(r"\S+ \((?:[0-9]+:)?([^)\s]+?)(?:-[^-)\s]+)?\)")


def _version() -> str:
    if _CHECKOUT_CHANGELOG.is_file():
        with _CHECKOUT_CHANGELOG.open(encoding="utf-8") as changelog:
            match = _CHANGELOG_VERSION.match(changelog.readline())
        if match is None:
            raise ValueError(f"{_CHECKOUT_CHANGELOG}: the first line names no version")
        return match.group(1)
    from importlib.metadata import version  # noqa: PLC0415 (only for an installed copy)

    return version("oignons-mail")


def __getattr__(name: str) -> str:
    """__version__, computed when asked for (the CLI asks only for --version)."""
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
