"""oignons-mail-smarthost installed over exim4 into real bookworm and trixie systems."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import Installed, installed_over_exim4, package_status
from tests.system.debian_system import RELEASES

PACKAGE = "oignons-mail-smarthost"

# The wiki's "Configuration sur les nœuds Tor", for the node marcuse, written
# out by hand so that the test does not trust the renderer it checks.
WIKI_MAIN_CF = {
    "mydomain": "nos-oignons.net",
    "myhostname": "marcuse.$mydomain",
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "myorigin": "$myhostname",
    "relayhost": "bulbe.$mydomain",
    # The wiki has [::ffff:127.0.0.0]/124, a typo for the /104 of 127.0.0.0/8.
    "mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
    "mynetworks_style": "host",
    "inet_interfaces": "loopback-only",
    "smtp_tls_security_level": "fingerprint",
    "smtp_tls_fingerprint_digest": "sha1",
    "smtp_tls_fingerprint_cert_match": "ac:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28",
    # A client certificate for the relay's relay_clientcerts (not in the wiki: see README).
    "smtp_tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
    "smtp_tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
    # The wiki's "!SSLv2, !SSLv3, !TLSv1" meant "only good protocols": today that is >=TLSv1.2.
    "smtp_tls_mandatory_protocols": ">=TLSv1.2",
    "smtp_tls_exclude_ciphers": "NULL, MD5, DES, RC4",
    "smtp_tls_mandatory_ciphers": "high",
    "smtp_tls_loglevel": "1",
    "smtp_tls_note_starttls_offer": "yes",
}
ALIASES_TO_ROOT = ("postmaster", "mailer-daemon", "nobody", "www-data", "daemon", "debian-tor")
ROOT_ALIAS = "machines@nos-oignons.net"


@pytest.fixture(scope="module", params=RELEASES)
def installed(request: pytest.FixtureRequest, dist: Path) -> Iterator[Installed]:
    preseed = f"{PACKAGE} {PACKAGE}/hostname string marcuse"
    with installed_over_exim4(dist, PACKAGE, request.param, preseed) as result:
        yield result


def test_exim4_is_replaced_by_postfix(installed: Installed) -> None:
    system = installed.system
    statuses = {
        package: package_status(system, package) for package in ("exim4", "exim4-daemon-light", "postfix", PACKAGE)
    }
    gone = ("not-installed", "config-files")
    assert statuses["exim4"] in gone, f"{system.release}: {statuses}\n{installed.install_log[-3000:]}"
    assert statuses["exim4-daemon-light"] in gone, f"{system.release}: {statuses}"
    assert statuses["postfix"] == "installed", f"{system.release}: {statuses}"
    assert statuses[PACKAGE] == "installed", f"{system.release}: {statuses}"


@pytest.mark.parametrize("key", sorted(WIKI_MAIN_CF))
def test_main_cf_has_the_wiki_value(installed: Installed, key: str) -> None:
    settings = installed.settings()
    assert settings.get(key) == WIKI_MAIN_CF[key], f"{installed.system.release}: {key} = {settings.get(key)!r}"


def test_system_users_go_to_root(installed: Installed) -> None:
    for user in ALIASES_TO_ROOT:
        result = installed.system.run(f"postalias -q {user} hash:/etc/postfix/oignons-mail/aliases")
        assert result.stdout.strip() == "root", f"{user}: {result.stdout!r} {result.stderr!r}"


def test_root_goes_to_the_machines_list_whatever_etc_aliases_says(installed: Installed) -> None:
    # exim4 left /etc/aliases behind; our table comes first in alias_maps.
    result = installed.system.run("postmap -q root $(postconf -xh alias_maps | tr ',' ' ')").check("postmap -q root")
    assert result.stdout.strip() == ROOT_ALIAS


def test_postfix_check_is_clean(installed: Installed) -> None:
    result = installed.system.run("postfix check 2>&1; echo status=$?")
    assert result.stdout.strip().endswith("status=0"), result.stdout


def test_reinstall_changes_nothing(installed: Installed) -> None:
    assert installed.snapshot_after_reinstall == installed.snapshot_after_install
    assert "notice" not in installed.reinstall_log, installed.reinstall_log


def test_no_staging_copy_is_left_behind(installed: Installed) -> None:
    leftovers = [p.name for p in (installed.system.root / "etc/postfix").iterdir() if "stage" in p.name]
    assert leftovers == []
