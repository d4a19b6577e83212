"""A package's whole life on a configured Postfix: Postfix's own maintenance,
an upgrade to our next version, and removal next to an administrator's edit.

Each package, each release.  The system starts with an administrator's
values for keys the package also sets and for keys it does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import (
    PACKAGE_RELEASES,
    PRESEED_NODE_NAME,
    configured_postfix,
    copy_package,
    main_cf,
    next_version,
    package_file,
    package_release_id,
)
from tests.system.debian_system import DebianSystem, Result

# Keys the packages set (relayhost: the smarthost; smtpd_banner: the relay;
# the TLS ones: both) and keys they do not.
ADMIN_VALUES = (
    "postconf -e 'relayhost = [old-relay.example.org]' 'smtp_tls_loglevel = 2'"
    " 'smtpd_banner = $myhostname ESMTP' 'message_size_limit = 20480000' 'smtp_tls_note_starttls_offer = no'"
)
UNRELATED = {"message_size_limit": "20480000"}
CHANGED_KEY, CHANGED_FROM, CHANGED_TO = "smtp_tls_loglevel", "1", "4"
DROPPED_KEY = "smtp_tls_note_starttls_offer"  # the admin had "no"; the package sets "yes"


def upgrade_edit(main_cf_text: str) -> str:
    """What version N+1 changes: one value changed, one setting dropped."""
    changed = {f"{CHANGED_KEY} = {CHANGED_FROM}": f"{CHANGED_KEY} = {CHANGED_TO}"}
    lines = [changed.get(line, line) for line in main_cf_text.splitlines() if not line.startswith(f"{DROPPED_KEY} =")]
    return "\n".join(lines) + "\n"


@dataclass
class Life:
    package: str
    release: str
    before: dict[str, str]
    installed: dict[str, str]
    after_postfix_reinstall: dict[str, str]
    after_postfix_reconfigure: dict[str, str]
    chroot_after_fix_master: list[str]
    upgraded: dict[str, str]
    upgrade: Result
    removal: Result
    removed: dict[str, str]


def settings(system: DebianSystem) -> dict[str, str]:
    return main_cf(system.run("postconf -n").check("postconf -n").stdout)


@pytest.fixture(scope="module", params=PACKAGE_RELEASES, ids=package_release_id)
def life(request: pytest.FixtureRequest, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Life]:
    package, release = request.param
    with configured_postfix(release, f"{ADMIN_VALUES}\n{PRESEED_NODE_NAME}") as system:
        deb_file = package_file(dist, package)
        deb = copy_package(system, deb_file)
        next_deb = copy_package(system, next_version(deb_file, tmp_path_factory.mktemp(package), upgrade_edit))
        before = settings(system)
        system.run(f"apt-get install -y -q --no-install-recommends {deb}").check(f"install {package}")
        installed = settings(system)
        system.run("apt-get install -y -q --reinstall postfix").check("reinstall postfix")
        after_postfix_reinstall = settings(system)
        system.run("dpkg-reconfigure -f noninteractive postfix").check("dpkg-reconfigure postfix")
        after_postfix_reconfigure = settings(system)
        # Postfix's postinst puts back a missing service, chrooted on bookworm.
        system.run("postconf -MX tlsmgr/unix && apt-get install -y -q --reinstall postfix").check("fix_master")
        chroot = system.run("postconf -F '*/*/chroot'").check("postconf -F").stdout.splitlines()
        upgrade = system.run(f"apt-get install -y -q {next_deb}").check("upgrade")
        upgraded = settings(system)
        # The administrator edits a key the package manages, then removes the package.
        system.run(f"postconf -e '{CHANGED_KEY} = 3'").check("edit by hand")
        removal = system.run(f"apt-get remove -y -q {package}").check("remove")
        removed = settings(system)
        yield Life(
            package,
            release,
            before,
            installed,
            after_postfix_reinstall,
            after_postfix_reconfigure,
            chroot,
            upgraded,
            upgrade,
            removal,
            removed,
        )


def test_reinstalling_postfix_keeps_every_setting(life: Life) -> None:
    assert life.after_postfix_reinstall == life.installed


def test_reconfiguring_postfix_keeps_every_setting(life: Life) -> None:
    assert life.after_postfix_reconfigure == life.installed


def test_services_postfix_adds_back_are_not_chrooted_on_the_relay(life: Life) -> None:
    if life.package != "oignons-mail-relay":
        pytest.skip("the smarthost leaves chroot as Postfix has it")
    if life.release == "bookworm":  # trixie's postinst does not put tlsmgr back
        assert "tlsmgr/unix/chroot = n" in life.chroot_after_fix_master
    assert [line for line in life.chroot_after_fix_master if not line.endswith(" = n")] == []


def test_the_upgrade_applies_the_changed_setting(life: Life) -> None:
    assert life.installed[CHANGED_KEY] == CHANGED_FROM
    assert life.upgraded[CHANGED_KEY] == CHANGED_TO


def test_the_upgrade_restores_the_dropped_setting_to_its_value_before_the_package(life: Life) -> None:
    assert life.installed[DROPPED_KEY] == "yes"
    assert life.upgraded[DROPPED_KEY] == life.before[DROPPED_KEY] == "no"


def test_the_upgrade_keeps_the_administrators_unrelated_settings(life: Life) -> None:
    for key, value in UNRELATED.items():
        assert life.upgraded[key] == value


def test_removal_keeps_a_value_changed_by_hand_and_says_so(life: Life) -> None:
    assert life.removed[CHANGED_KEY] == "3"
    assert f"notice: keeping {CHANGED_KEY} as changed by hand" in life.removal.stderr, life.removal.stderr


def test_removal_restores_every_other_key(life: Life) -> None:
    expected = {key: value for key, value in life.before.items() if key != CHANGED_KEY}
    assert {key: value for key, value in life.removed.items() if key != CHANGED_KEY} == expected


def test_a_service_postfix_adds_after_the_package_gets_its_chroot_back_on_removal(dist: Path) -> None:
    """The record takes the fields of services Postfix's postinst adds later (bookworm's fix_master)."""
    package = "oignons-mail-relay"
    with configured_postfix("bookworm", "postconf -MX tlsmgr/unix") as system:
        deb = copy_package(system, package_file(dist, package))
        system.run(f"apt-get install -y -q --no-install-recommends {deb}").check(f"install {package}")
        system.run("apt-get install -y -q --reinstall postfix").check("reinstall postfix")
        added = system.run("postconf -F tlsmgr/unix/chroot").check("postconf -F").stdout.strip()
        system.run(f"apt-get remove -y -q {package}").check(f"remove {package}")
        removed = system.run("postconf -F tlsmgr/unix/chroot").check("postconf -F").stdout.strip()
    assert added == "tlsmgr/unix/chroot = n"
    assert removed == "tlsmgr/unix/chroot = y"
