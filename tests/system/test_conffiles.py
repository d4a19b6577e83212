"""Never a dpkg question: every package's conffiles, exactly, read from the built .debs.

A conffile an administrator edited makes dpkg ask on upgrade (and
unattended-upgrades skip it): each one is a decision, listed here.  Every file
a package ships under /etc is a conffile (or dpkg would overwrite it without
a word), and none is under /etc/postfix, which the packages change only with
postconf.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from oignons_mail import repo
from tests.system.conftest import package_file

CONFFILES = {
    "oignons-mail": [],
    "oignons-mail-smarthost": [],
    "oignons-mail-relay": [
        "/etc/rspamd/local.d/arc.conf",
        "/etc/rspamd/local.d/dkim_signing.conf",
        "/etc/rspamd/local.d/force_actions.conf",
        "/etc/rspamd/local.d/greylist.conf",
        "/etc/rspamd/local.d/milter_headers.conf",
        "/etc/rspamd/local.d/multimap.conf",
        "/etc/rspamd/local.d/ratelimit.conf",
        "/etc/rspamd/local.d/redis.conf",
        "/etc/rspamd/local.d/rspamd.lua",
        "/etc/rspamd/local.d/worker-proxy.inc",
        "/etc/rspamd/override.d/options.inc",
    ],
    repo.KEYRING_PACKAGE: [
        "/etc/apt/sources.list.d/oignons-mail.sources",
        "/etc/apt/apt.conf.d/51oignons-mail-unattended-upgrades",
    ],
}
ARCHIVE = repo.Archive("http://apt.example.org/oignons/", "nos-oignons.net", "Nos oignons <contact@nos-oignons.net>")


def conffiles(deb: Path) -> list[str]:
    """The deb's DEBIAN/conffiles, in order (none: [])."""
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], check=True, capture_output=True).stdout
    names = subprocess.run(["tar", "-t"], input=control, check=True, capture_output=True).stdout.decode().split()
    if "./conffiles" not in names:
        return []
    return subprocess.run(
        ["dpkg-deb", "-I", str(deb), "conffiles"], check=True, capture_output=True, text=True
    ).stdout.split()


def files_under_etc(deb: Path) -> list[str]:
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    names = subprocess.run(["tar", "-t"], input=listing, check=True, capture_output=True).stdout.decode().splitlines()
    return [name.removeprefix(".") for name in names if name.startswith("./etc/") and not name.endswith("/")]


@pytest.fixture(scope="module")
def debs(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    built = {package: package_file(dist, package) for package in CONFFILES if package != repo.KEYRING_PACKAGE}
    keyring = repo.keyring_package_files(ARCHIVE, "1.0", b"KEY", "Wed, 25 Nov 2026 12:00:00 +0000")
    output = tmp_path_factory.mktemp("keyring") / f"{repo.KEYRING_PACKAGE}_1.0_all.deb"
    built[repo.KEYRING_PACKAGE] = repo.build_keyring_deb(keyring, output)
    return built


@pytest.mark.parametrize("package", sorted(CONFFILES))
def test_the_conffiles_are_exactly_these(debs: dict[str, Path], package: str) -> None:
    assert conffiles(debs[package]) == CONFFILES[package]


@pytest.mark.parametrize("package", sorted(CONFFILES))
def test_every_file_under_etc_is_a_conffile_and_none_is_postfixs(debs: dict[str, Path], package: str) -> None:
    under_etc = files_under_etc(debs[package])
    assert sorted(under_etc) == sorted(CONFFILES[package])
    assert [name for name in under_etc if name.startswith("/etc/postfix/")] == []
