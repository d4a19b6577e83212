"""Build the binary packages: dpkg-buildpackage on a clean copy of the source."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from debian.changelog import Changelog

from oignons_mail.errors import BuildError
from oignons_mail.render import RenderedTree
from oignons_mail.writer import replace_files

# What a build copies: the source package, without build products or VCS data.
# build/ and dist/ only at the top: a file named "build" deeper down (the
# apply plan's golden output) is source, and the tests that read it run in the copy.
_NOT_COPIED_ANYWHERE = (".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.egg-info")
_NOT_COPIED_AT_THE_TOP = ("build", "dist")


def not_copied(source: Path) -> Callable[[str, list[str]], set[str]]:
    """shutil.copytree's `ignore` for a copy of the source tree at `source`."""
    anywhere = shutil.ignore_patterns(*_NOT_COPIED_ANYWHERE)
    top = source.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(anywhere(directory, names))
        if Path(directory).resolve() == top:
            ignored.update(name for name in names if name in _NOT_COPIED_AT_THE_TOP)
        return ignored

    return ignore


_PRODUCT_SUFFIXES = (".deb", ".buildinfo", ".changes")
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ReleaseEntry:
    """The last entry of debian/changelog: the release `make deb` builds."""

    package: str
    version: str
    maintainer: str
    date: str


def release_entry(source: Path, changelog_file: Path | None = None) -> ReleaseEntry:
    """The last entry of `changelog_file` (a site's), by default of the source tree's debian/changelog."""
    changelog_path = changelog_file if changelog_file is not None else source / "debian" / "changelog"
    try:
        with changelog_path.open(encoding="utf-8") as handle:
            changelog = Changelog(handle, max_blocks=1)
    except OSError as error:
        raise BuildError(f"{changelog_path}: cannot be read: {error}") from None
    return ReleaseEntry(changelog.package, str(changelog.version), str(changelog.author), str(changelog.date))


def source_version(source: Path, changelog: Path | None = None) -> tuple[str, str]:
    """(source package name, version) from debian/changelog (or the site's `changelog`)."""
    entry = release_entry(source, changelog)
    return entry.package, entry.version


def build_packages(
    source: Path, site: Path, source_files: RenderedTree, work: Path, dist: Path, *, changelog: Path | None = None
) -> list[Path]:
    """Build the .debs for `site` from the source tree; return the files put in dist.

    The build runs in a copy under `work` so that dpkg-buildpackage's products
    (written to the parent directory) and debian/ leftovers never touch the
    source tree.  `source_files` (the site's debian/control and
    debian/copyright) replace the committed ones in the copy; `changelog`
    (the site's release history) replaces debian/changelog.
    """
    package, version = source_version(source, changelog)
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    tree = work / f"{package}-{upstream}"
    if tree.exists():
        shutil.rmtree(tree)
    for stale in work.glob(f"{package}_*") if work.is_dir() else []:
        stale.unlink()
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, tree, ignore=not_copied(source), symlinks=True)
    replace_files(source_files, tree)
    if changelog is not None:
        shutil.copyfile(changelog, tree / "debian" / "changelog")
    # Debian's tools first: pybuild runs `python3.X` from PATH, and another
    # python3 (pyenv, a venv) lacks the build-dependencies.
    environment = dict(os.environ, OIGNONS_MAIL_SITE=str(site.resolve()), PATH=DEBIAN_PATH)
    command = ["dpkg-buildpackage", "--build=binary", "--no-sign"]
    if shutil.which(command[0], path=DEBIAN_PATH) is None:
        raise BuildError("dpkg-buildpackage is not installed: run `make deb`, which installs the build-dependencies")
    result = subprocess.run(command, cwd=tree, env=environment, check=False)
    if result.returncode != 0:
        raise BuildError(f"dpkg-buildpackage failed with status {result.returncode} (its output is above)")
    dist.mkdir(parents=True, exist_ok=True)
    # dist/ holds one build: an older version's .deb must not be tested or shipped.
    for old in dist.glob("*_*"):
        if old.name.endswith(_PRODUCT_SUFFIXES):
            old.unlink()
    products = []
    for product in sorted(work.glob(f"*_{upstream}*")):
        if product.name.endswith(_PRODUCT_SUFFIXES):
            target = dist / product.name
            shutil.move(product, target)
            products.append(target)
    return products
