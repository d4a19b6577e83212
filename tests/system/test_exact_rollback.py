"""Install + purge gives back the administrator's Postfix, key by key.

Each package, each release, from a Postfix with non-default values of keys
the package also sets.
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
    package_file,
    package_release_id,
)
from tests.system.debian_system import Result

# Keys both packages set, with values neither package uses, plus a master.cf
# service of the administrator's and a chroot setting the relay changes.
ADMIN_CONFIGURATION = """
postconf -e 'relayhost = [old-relay.example.org]:587' 'smtp_tls_loglevel = 2' 'mynetworks_style = subnet' \
    'smtpd_banner = $myhostname ESMTP hello' 'alias_maps = hash:/etc/aliases, hash:/etc/postfix/virtual-aliases' \
    'smtp_tls_security_level = encrypt' 'message_size_limit = 20480000'
postconf -M -e 'submission/inet = submission inet n - y - - smtpd -o syslog_name=postfix/submission'
postconf -M -e 'slow/unix = slow unix - - y - 2 smtp'
"""
# postconf -M lists services in file order; a service removed and put back
# moves, which Postfix does not see: compare them as a set.  Beyond what is
# set: every parameter's effective value (defaults included: a key put back
# as set, not as the default it was, shows there; postconf's own process_id
# changes at each run), and every other file under /etc/postfix, byte for byte.
SETTINGS = (
    "postconf -n; echo '--- master.cf'; postconf -M | sort"
    "; echo '--- effective'; postconf 2>/dev/null | grep -v '^process_id = '"
    "; echo '--- files'; cd /etc/postfix && find . ! -name main.cf ! -name master.cf | sort"
    " && find . -type f ! -name main.cf ! -name master.cf -exec sha256sum {} + | sort"
)


@dataclass
class Rollback:
    before: str
    installed: str
    purged: str
    purge: Result
    leftovers: Result


@pytest.fixture(scope="module", params=PACKAGE_RELEASES, ids=package_release_id)
def rollback(request: pytest.FixtureRequest, dist: Path) -> Iterator[Rollback]:
    package, release = request.param
    with configured_postfix(release, ADMIN_CONFIGURATION + PRESEED_NODE_NAME) as system:
        deb = copy_package(system, package_file(dist, package))
        before = system.run(SETTINGS).check("settings").stdout
        system.run(f"apt-get install -y -q --no-install-recommends {deb}").check(f"install {package}")
        installed = system.run(SETTINGS).check("settings").stdout
        purge = system.run(f"apt-get purge -y -q {package}").check(f"purge {package}")
        purged = system.run(SETTINGS).check("settings").stdout
        leftovers = system.run(f"ls -d /var/lib/{package} /etc/postfix/oignons-mail /etc/postfix/.*stage* 2>&1")
        yield Rollback(before, installed, purged, purge, leftovers)


def test_the_package_changed_the_configuration(rollback: Rollback) -> None:
    assert rollback.installed != rollback.before


def test_purge_restores_every_key_and_service(rollback: Rollback) -> None:
    assert rollback.purged == rollback.before


def test_purge_says_nothing_was_changed_by_hand(rollback: Rollback) -> None:
    assert "notice" not in rollback.purge.stderr, rollback.purge.stderr


def test_purge_leaves_no_record_table_or_staging_copy(rollback: Rollback) -> None:
    assert rollback.leftovers.stdout.count("No such file or directory") == 3, rollback.leftovers.stdout
