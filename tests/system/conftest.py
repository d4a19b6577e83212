"""Fixtures of the system tests: the built packages and real Debian systems."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian.deb822 import Deb822

from tests.system.debian_system import EXIM4_SYSTEM, RELEASES, DebianSystem, base_tarball

DIST = Path(__file__).resolve().parents[2] / "dist"
# The build tool renders the test sites into packages (package_for_site).
SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


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


@dataclass
class Installed:
    """A package installed over exim4, and what the test saw on the way."""

    system: DebianSystem
    install_log: str
    postconf_n: str
    snapshot_after_install: str
    snapshot_after_reinstall: str
    reinstall_log: str

    def settings(self) -> dict[str, str]:
        return main_cf(self.postconf_n)

    def query(self, key: str, table: str) -> str:
        result = self.system.run(f"postmap -q {key} {table}")
        return result.stdout.strip()


def main_cf(text: str) -> dict[str, str]:
    """`postconf -n` output as a dict."""
    settings = {}
    for line in text.splitlines():
        key, _, value = line.partition(" = ")
        settings[key] = value
    return settings


# What must not change when a package is configured again.
SNAPSHOT = r"""
postconf -n
echo '--- master.cf'
postconf -M
echo '--- files'
cd /etc/postfix && sha256sum main.cf master.cf oignons-mail/*
echo '--- aliases'
postmap -q root $(postconf -xh alias_maps | tr ',' ' ')
"""


PACKAGES = ("oignons-mail-smarthost", "oignons-mail-relay")
# Every (package, release) pair, for fixtures that test both packages on both releases.
PACKAGE_RELEASES = [(package, release) for package in PACKAGES for release in RELEASES]
# Without a host name the smarthost's postinst stops (the relay ignores it).
PRESEED_NODE_NAME = (
    "echo 'oignons-mail-smarthost oignons-mail-smarthost/hostname string marcuse' | debconf-set-selections"
)


def package_release_id(param: tuple[str, str]) -> str:
    return f"{param[0].removeprefix('oignons-mail-')}-{param[1]}"


@contextmanager
def configured_postfix(release: str, administrator_commands: str) -> Iterator[DebianSystem]:
    """A standard system whose administrator replaced exim4 with Postfix, then ran some commands."""
    system = DebianSystem(base_tarball(release, EXIM4_SYSTEM), release)
    try:
        system.run(
            f"""set -e
            apt-get update -q
            apt-get install -y -q postfix exim4-base- exim4-config- exim4-daemon-light- exim4-
            {administrator_commands}
            """
        ).check(f"install and configure postfix on {release}")
        yield system
    finally:
        system.remove()


def copy_package(system: DebianSystem, deb_file: Path) -> str:
    """Put a .deb into the system; its path there."""
    return system.copy_in(deb_file, f"/root/{deb_file.name}")


@contextmanager
def installed_over_exim4(dist: Path, package: str, release: str, preseed: str = "") -> Iterator[Installed]:
    """Install `package` with apt into a fresh standard system of `release`, then reinstall it."""
    system = DebianSystem(base_tarball(release, EXIM4_SYSTEM), release)
    try:
        deb_file = package_file(dist, package)
        deb = system.copy_in(deb_file, f"/root/{deb_file.name}")
        install = system.run(
            f"""set -e
            apt-get update -q
            echo '{preseed}' | debconf-set-selections
            apt-get install -y -q --no-install-recommends {deb}
            """
        ).check(f"apt-get install {package} on {release}")
        postconf_n = system.run("postconf -n").check("postconf -n").stdout
        before = system.run(SNAPSHOT).check("snapshot").stdout
        reinstall = system.run(f"apt-get install -y -q --reinstall {deb}").check("reinstall")
        after = system.run(SNAPSHOT).check("snapshot").stdout
        yield Installed(
            system, install.stdout + install.stderr, postconf_n, before, after, reinstall.stdout + reinstall.stderr
        )
    finally:
        system.remove()


def package_status(system: DebianSystem, package: str) -> str:
    result = system.run(f"dpkg-query -W -f='${{db:Status-Status}}' {package} 2>/dev/null || true")
    return result.stdout.strip() or "not-installed"


def package_file(dist: Path, package: str) -> Path:
    matches = sorted(dist.glob(f"{package}_*_all.deb"))
    if len(matches) != 1:
        pytest.fail(f"expected one {package}_*_all.deb in {dist}, found {[m.name for m in matches]}")
    return matches[0]


def next_version(deb: Path, work: Path, edit_main_cf: Callable[[str], str]) -> Path:
    """Version N+1 of a built package: its rendered main.cf edited, its version raised.

    This is what a new release of the packages looks like to the host: the
    same maintainer scripts with other rendered data.
    """
    tree = work / "next"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=60)
    control = Deb822((tree / "DEBIAN" / "control").read_text(encoding="utf-8"))
    main_cf_path = tree / "usr" / "share" / control["Package"] / "main.cf"
    main_cf_path.write_text(edit_main_cf(main_cf_path.read_text(encoding="utf-8")), encoding="utf-8")
    return build_tree(tree, work, f"{control['Version']}+next1")


# The test sites: fixtures of their own, not the association's site file.
TEST_SITE = Path(__file__).resolve().parents[1] / "golden" / "nos-oignons" / "in" / "site.toml"


def package_for_site(
    deb: Path, site_file: Path, version: str, work: Path, edit_data: Callable[[Path], None] | None = None
) -> Path:
    """`deb`'s maintainer scripts with the data rendered from another site, as `version`.

    A release of a site change is exactly this: the same scripts, other data
    in /usr/share/PACKAGE (and other debconf templates for the smarthost).
    `edit_data` may then change the data directory, to make a broken release.
    """
    # Imported here: src is on the path only once this module has run.
    from oignons_mail.render import render  # noqa: PLC0415
    from oignons_mail.site import load_site  # noqa: PLC0415

    tree = work / f"tree-{version}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=60)
    package = Deb822((tree / "DEBIAN" / "control").read_text(encoding="utf-8"))["Package"]
    role = package.removeprefix("oignons-mail-")
    data = tree / "usr" / "share" / package
    for name in ("main.cf", "master.cf", "tables", "responder.json", "tables.d"):
        path = data / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for name, text in render(load_site(site_file)).items():
        if not name.startswith(f"{role}/"):
            continue
        relative = name.removeprefix(f"{role}/")
        target = tree / "DEBIAN" / "templates" if relative == "debconf.templates" else data / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if edit_data is not None:
        edit_data(data)
    return build_tree(tree, work, version)


def build_tree(tree: Path, work: Path, version: str) -> Path:
    """Build an unpacked package tree as `version`, its md5sums made true to its files."""
    control_path = tree / "DEBIAN" / "control"
    control = Deb822(control_path.read_text(encoding="utf-8"))
    package = control["Package"]
    control["Version"] = version
    control_path.write_text(str(control), encoding="utf-8")
    # Keep md5sums true to the files, as dh_md5sums would.
    conffiles = tree / "DEBIAN" / "conffiles"
    excluded = set(conffiles.read_text(encoding="utf-8").split()) if conffiles.exists() else set()
    sums = [
        f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(tree)}"  # noqa: S324 - dpkg's format
        for path in sorted(tree.rglob("*"))
        if path.is_file()
        and path.relative_to(tree).parts[0] != "DEBIAN"
        and f"/{path.relative_to(tree)}" not in excluded
    ]
    (tree / "DEBIAN" / "md5sums").write_text("\n".join(sums) + "\n", encoding="utf-8")
    target = work / f"{package}_{control['Version']}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(target)], check=True, timeout=60)
    return target
