"""oignons-mail-relay installed over exim4 into real bookworm and trixie systems."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oignons_mail.render import RECIPIENT_EXTENSIONS_FILE
from tests.system.conftest import Installed, copy_package, installed_over_exim4, package_file, package_status
from tests.system.debian_system import RELEASES

PACKAGE = "oignons-mail-relay"
TABLES = "/etc/postfix/oignons-mail"

# The wiki's "Configuration sur bulbe" to "slow transports", written out by
# hand so that the test does not trust the renderer it checks.
WIKI_MAIN_CF = {
    "myhostname": "bulbe.nos-oignons.net",
    "mydomain": "bulbe.nos-oignons.net",
    "mydestination": (
        "nos-oignons.net, bulbe.nos-oignons.net, nos-oignons.org, bulbe.nos-oignons.org,"
        " nos-oignons.fr, bulbe.nos-oignons.fr, bulbe.tetaneutral.net, localhost"
    ),
    "recipient_delimiter": "+",
    "local_recipient_maps": f"$alias_maps, hash:{TABLES}/schleuder, hash:{TABLES}/responder, hash:{TABLES}/heartbeat",
    "smtpd_sasl_auth_enable": "no",
    "smtpd_banner": "$myhostname ESMTP $mail_name (Debian GNU/Oignons)",
    # Closed relay: a hard 5xx for strangers; the nodes relay by client certificate.
    "smtpd_relay_restrictions": "permit_mynetworks, permit_tls_clientcerts, reject_unauth_destination",
    "smtpd_tls_ask_ccert": "yes",
    "smtpd_tls_fingerprint_digest": "sha256",
    "relay_clientcerts": f"hash:{TABLES}/relay_clientcerts",
    "smtpd_tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
    "smtpd_tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
    "smtpd_tls_security_level": "may",
    "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
    "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
    "smtp_tls_security_level": "dane",
    "smtp_dns_support_level": "dnssec",
    "smtpd_milters": "unix:/run/rspamd/milter.sock",
    "non_smtpd_milters": "$smtpd_milters",
    "milter_default_action": "accept",
    "transport_maps": (
        f"hash:{TABLES}/transport, hash:{TABLES}/schleuder, hash:{TABLES}/responder, hash:{TABLES}/heartbeat"
    ),
    "schleuder_destination_recipient_limit": "1",
    "alias_maps": f"hash:{TABLES}/aliases.local, hash:{TABLES}/aliases, hash:/etc/aliases",
    "slow_destination_concurrency_limit": "2",
    "slow_destination_recipient_limit": "20",
    "slow_destination_rate_delay": "2s",
    "yahoo_initial_destination_concurrency": "1",
    "yahoo_destination_concurrency_limit": "4",
    "yahoo_destination_recipient_limit": "2",
    "yahoo_destination_rate_delay": "1s",
    "default_destination_concurrency_limit": "10",
}
# Issue 12: what an outside attacker meets, on both releases (bookworm's
# defaults are weaker: smtpd_forbid_bare_newline = no, TLS >= 1.0, no limits).
HARDENED_MAIN_CF = {
    "smtpd_forbid_bare_newline": "normalize",
    "smtpd_forbid_bare_newline_exclusions": "$mynetworks",
    "smtpd_data_restrictions": (
        f"reject_unauth_pipelining, check_ccert_access hash:{TABLES}/heartbeat_nodes, permit_mynetworks,"
        " permit_tls_clientcerts, check_client_access static:{PREPEND X-Oignons-Origin: outside}"
    ),
    "disable_vrfy_command": "yes",
    "smtpd_helo_required": "yes",
    "smtpd_sender_restrictions": (
        "permit_mynetworks, permit_tls_clientcerts,"
        " check_sender_access regexp:/usr/share/oignons-mail-relay/own_domains.regexp,"
        " reject_non_fqdn_sender, reject_unknown_sender_domain"
    ),
    "unknown_address_reject_code": "550",
    "smtpd_recipient_restrictions": (
        f"check_recipient_access hash:{TABLES}/schleuder_superadmin, permit_mynetworks, permit_tls_clientcerts,"
        f" check_recipient_access hash:{TABLES}/local_only_recipients,"
        " check_recipient_access regexp:/usr/share/oignons-mail-relay/list_commands.regexp"
    ),
    "smtpd_client_connection_rate_limit": "100",
    "smtpd_client_message_rate_limit": "100",
    "smtpd_client_connection_count_limit": "10",
    "smtpd_client_recipient_rate_limit": "100",
    "smtpd_recipient_limit": "500",
    "smtpd_discard_ehlo_keywords": "silent-discard, dsn",
    "smtpd_tls_protocols": ">=TLSv1.2",
    "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
    "tls_preempt_cipherlist": "yes",
}
MASTER_CF = {
    "smtps/inet": (
        "smtps inet n - n - - smtpd -o syslog_name=postfix/smtps -o smtpd_tls_wrappermode=yes"
        " -o smtpd_tls_ciphers=high -o smtpd_tls_mandatory_ciphers=high"
        " -o tls_high_cipherlist=ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
    ),
    "schleuder/unix": (
        "schleuder unix - n n - - pipe flags=DRhu user=schleuder argv=/usr/bin/schleuder work ${recipient}"
    ),
    "slow/unix": "slow unix - - n - 5 smtp -o syslog_name=postfix/slow",
    "yahoo/unix": "yahoo unix - - n - 5 smtp -o syslog_name=postfix/yahoo",
    "heartbeat/unix": (
        "heartbeat unix - n n - 2 pipe flags=Rq user=oignons-heartbeat"
        " argv=/usr/lib/oignons-mail-relay/heartbeat-receiver"
    ),
}
ROUTES = {
    ("orange.fr", "transport"): "slow:",
    ("yahoo.com", "transport"): "yahoo:",
    ("machines@nos-oignons.net", "schleuder"): "schleuder:",
    ("machines-request@nos-oignons.net", "schleuder"): "schleuder:",
    ("machines-owner@nos-oignons.net", "schleuder"): "schleuder:",
    ("machines-bounce@nos-oignons.net", "schleuder"): "schleuder:",
    ("machines-sendkey@nos-oignons.net", "schleuder"): "schleuder:",
    ("dons@nos-oignons.net", "responder"): "responder:",
    ("donner@nos-oignons.org", "responder"): "responder:",
    ("donate@nos-oignons.fr", "responder"): "responder:",
    ("root", "aliases"): "machines@nos-oignons.net",
    ("postmaster", "aliases"): "root",
    ("debian-tor@", "local_only_recipients"): "550 5.1.1 User unknown in local recipient table",
    ("root@", "local_only_recipients"): "550 5.1.1 User unknown in local recipient table",
    # The heartbeat address: local programs and the nodes only (docs/fleet-health.md).
    ("heartbeat@", "local_only_recipients"): "550 5.1.1 User unknown in local recipient table",
    ("heartbeat@nos-oignons.net", "heartbeat"): "heartbeat:",
    ("root@localhost", "schleuder_superadmin"): (
        "DISCARD Schleuder superadmin notice, logged by Schleuder (journalctl -t Schleuder)"
    ),
}
# RFC 2142's addresses stay public.
PUBLIC_ALIASES = ("postmaster@", "abuse@", "hostmaster@", "webmaster@", "security@", "noc@")


@pytest.fixture(scope="module", params=RELEASES)
def installed(request: pytest.FixtureRequest, dist: Path) -> Iterator[Installed]:
    with installed_over_exim4(dist, PACKAGE, request.param) as result:
        yield result


def test_exim4_is_replaced_by_postfix(installed: Installed) -> None:
    statuses = {p: package_status(installed.system, p) for p in ("exim4", "exim4-daemon-light", "postfix", PACKAGE)}
    assert statuses["exim4"] in ("not-installed", "config-files"), statuses
    assert statuses["exim4-daemon-light"] in ("not-installed", "config-files"), statuses
    assert (statuses["postfix"], statuses[PACKAGE]) == ("installed", "installed"), installed.install_log[-3000:]


@pytest.mark.parametrize("key", sorted(WIKI_MAIN_CF))
def test_main_cf_has_the_wiki_value(installed: Installed, key: str) -> None:
    value = installed.settings().get(key)
    assert value == WIKI_MAIN_CF[key], f"{installed.system.release}: {key} = {value!r}"


@pytest.mark.parametrize("key", sorted(HARDENED_MAIN_CF))
def test_main_cf_has_the_hardened_value(installed: Installed, key: str) -> None:
    value = installed.settings().get(key)
    assert value == HARDENED_MAIN_CF[key], f"{installed.system.release}: {key} = {value!r}"


def test_the_smtps_cipher_list_is_forward_secret_aead_only(installed: Installed) -> None:
    """What the release's OpenSSL makes of port 465's cipher list: ECDHE/DHE with AES-GCM or ChaCha20."""
    ciphers = (
        installed.system.run("openssl ciphers -v 'ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20'")
        .check("openssl ciphers")
        .stdout.splitlines()
    )
    tls12 = [line.split() for line in ciphers if " TLSv1.2 " in f" {line} "]
    assert tls12, ciphers
    for name, _, kx, _, enc, *_ in tls12:
        assert kx in ("Kx=ECDH", "Kx=DH"), name
        assert "GCM" in enc or "CHACHA20" in enc, name


@pytest.mark.parametrize("address", PUBLIC_ALIASES)
def test_rfc_2142_addresses_are_not_local_only(installed: Installed, address: str) -> None:
    assert installed.query(address, f"hash:{TABLES}/local_only_recipients") == ""


def test_local_recipients_never_come_from_passwd(installed: Installed) -> None:
    assert "passwd" not in installed.settings()["local_recipient_maps"]


@pytest.mark.parametrize("service", sorted(MASTER_CF))
def test_master_cf_has_the_service(installed: Installed, service: str) -> None:
    entry = " ".join(installed.system.run(f"postconf -M {service}").stdout.split())
    assert entry == MASTER_CF[service]


def test_the_responder_runs_as_its_own_unprivileged_user(installed: Installed) -> None:
    system = installed.system
    entry = " ".join(system.run("postconf -M responder/unix").stdout.split())
    assert " pipe flags=Rq user=oignons-responder null_sender= argv=/usr/lib/oignons-mail-relay/responder " in entry
    user = system.run("getent passwd oignons-responder").check("getent").stdout.split(":")
    assert int(user[2]) not in (0, 65534), user
    owner = system.run("stat -c %U:%a /var/lib/oignons-mail-relay/responder").check("stat").stdout.strip()
    assert owner == "oignons-responder:750"
    assert system.run("/usr/lib/oignons-mail-relay/responder --help").returncode == 0


def test_no_service_is_chrooted(installed: Installed) -> None:
    fields = installed.system.run("postconf -F '*/*/chroot'").check("postconf -F").stdout.splitlines()
    assert len(fields) > 10
    assert [f for f in fields if not f.endswith(" = n")] == []


@pytest.mark.parametrize(("key", "table"), sorted(ROUTES))
def test_tables_route_the_address(installed: Installed, key: str, table: str) -> None:
    assert installed.query(key, f"hash:{TABLES}/{table}") == ROUTES[(key, table)]


def test_confinement_drop_in_serves_the_main_instance_of_both_releases(installed: Installed) -> None:
    for unit in ("postfix@.service", "postfix.service"):
        text = installed.system.read(f"/usr/lib/systemd/system/{unit}.d/oignons-mail-relay.conf")
        assert "NoNewPrivileges=yes" in text
        assert "ProtectHome=yes" in text


def test_rspamd_proxy_worker_listens_on_the_milter_socket(installed: Installed) -> None:
    text = installed.system.read("/etc/rspamd/local.d/worker-proxy.inc")
    assert 'bind_socket = "/run/rspamd/milter.sock mode=0660 owner=_rspamd group=postfix";' in text


def test_dane_needs_a_resolver_notice(installed: Installed) -> None:
    assert "DANE (smtp_tls_security_level = dane) needs a local DNSSEC-validating" in installed.install_log


def test_postfix_check_is_clean(installed: Installed) -> None:
    result = installed.system.run("postfix check 2>&1; echo status=$?")
    assert result.stdout.strip().endswith("status=0"), result.stdout


def test_reinstall_changes_nothing(installed: Installed) -> None:
    assert installed.snapshot_after_reinstall == installed.snapshot_after_install


def test_the_tool_speaks_for_the_installed_relays_site_with_python3_alone(installed: Installed, dist: Path) -> None:
    """`oignons-mail validate` and `dns` with no site argument: the relay's own site; nothing beyond python3."""
    system = installed.system
    deb = copy_package(system, package_file(dist, "oignons-mail"))
    system.run(f"apt-get install -y -q --no-install-recommends {deb}").check("apt-get install oignons-mail")
    for module in ("python3-jinja2", "python3-debian", "python3-dnspython"):
        assert package_status(system, module) == "not-installed"
    site = "/usr/share/oignons-mail-relay/site.toml"
    validate = system.run("cd / && oignons-mail validate").check("oignons-mail validate")
    assert validate.stdout == f"{site}: valid (7 relay destinations, 1 relay pin(s))\n"
    # No DKIM key yet (rspamd, a Recommends, is not installed): every other record, and status 1.
    dns = system.run("cd / && oignons-mail dns")
    assert dns.returncode == 1, dns.stderr
    assert "nos-oignons.net. 3600 IN MX 10 bulbe.nos-oignons.net.\n" in dns.stdout
    assert "_25._tcp.bulbe.nos-oignons.net. 3600 IN TLSA 3 1 1 " in dns.stdout
    assert "oignons-mail: incomplete: no DKIM public key for selector bulbe1 of nos-oignons.net" in dns.stderr
    render = system.run("cd / && oignons-mail render /tmp/rendered")
    assert render.returncode == 1
    assert "render needs python3-jinja2" in render.stderr


# cleanup's canonical lookup, by Postfix itself: extensions of the site's addresses dropped, Mailman's kept.
EXTENSION_REWRITES = {
    "postmaster+0@nos-oignons.net": "postmaster@nos-oignons.net",
    "dons+1@nos-oignons.net": "dons@nos-oignons.net",
    "discussion-bounces+someone=example.org@nos-oignons.org": "discussion-bounces+someone=example.org@nos-oignons.org",
    "SRS0=HHHH=TT=example.org=user+tag@nos-oignons.net": "SRS0=HHHH=TT=example.org=user+tag@nos-oignons.net",
    "user+x@elsewhere.test": "",
    "postmaster@nos-oignons.net": "",
}


def test_cleanup_merges_the_extensions_of_the_sites_addresses(installed: Installed) -> None:
    table = f"regexp:{RECIPIENT_EXTENSIONS_FILE}"
    # The cleanup service's map, not main.cf's (where smtpd would take what it maps for known recipients).
    assert "canonical_maps" not in installed.settings()
    cleanup = installed.system.run("postconf -M cleanup/unix").check("postconf -M cleanup/unix").stdout
    assert f"-o canonical_maps={table} -o canonical_classes=envelope_recipient" in cleanup, cleanup
    assert {address: installed.query(address, table) for address in EXTENSION_REWRITES} == EXTENSION_REWRITES
