"""Upgrades and downgrades converge exactly, key by key.

Each package, each release, on a Postfix an administrator configured (some of
the keys and services the package sets had values of their own).  Version N
is built from the test site, version N+1 from a changed copy of it: the
yahoo transport dropped (service, `yahoo_*` keys, transport entry), the
Schleuder lists dropped (table, service, keys), a transport added, the
relay's pin (for the nodes), a node's pin (for the relay) and a rate changed.  Then, in one system:

    install N, reinstall postfix, upgrade to N+1, remove,
    install N+1, downgrade to N, remove,
    install N, edit aliases.local, upgrade to N+1 with apt, purge

and after each step the whole of what Postfix reads (`postconf -n`,
`postconf -M`, `postconf -F`, every entry of every table) equals what a fresh
install of that version gives, or the state before the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import (
    PACKAGE_RELEASES,
    PRESEED_NODE_NAME,
    TEST_SITE,
    configured_postfix,
    copy_package,
    package_file,
    package_for_site,
    package_release_id,
)
from tests.system.debian_system import DebianSystem, Result

# The administrator's Postfix: a value for a key of the dropped transport, a
# service the package replaces and N+1 drops, a key both versions set.
ADMIN_CONFIGURATION = """
postconf -e 'yahoo_destination_rate_delay = 5s' 'smtp_tls_loglevel = 2' 'message_size_limit = 20480000' \
    'relayhost = [old-relay.example.org]:587'
postconf -M -e 'yahoo/unix = yahoo unix - - y - 1 smtp'
"""
YAHOO_BLOCK = """[[relay.transports]]
name = "yahoo"
process_limit = 5
destinations = ["yahoo.com"]
initial_destination_concurrency = 1
destination_concurrency_limit = 4
destination_recipient_limit = 2
destination_rate_delay = "1s"
"""
GMAIL_BLOCK = """[[relay.transports]]
name = "gmail"
process_limit = 3
destinations = ["gmail.com"]
destination_concurrency_limit = 3
"""
OLD_PIN = "ac:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28"
NEW_PIN = "11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff:01:23:45:67"
NODE_PIN = ":".join(["ab"] * 32)
NEXT_SITE_EDITS = (
    (YAHOO_BLOCK, GMAIL_BLOCK),
    ('schleuder_lists = ["machines@nos-oignons.net"]', "schleuder_lists = []"),
    ('destination_rate_delay = "2s"', 'destination_rate_delay = "3s"'),
    (f'relay_pins = ["{OLD_PIN}"]', f'relay_pins = ["{NEW_PIN}"]'),
    ("node_pins = {}", f'node_pins = {{ marcuse = "{NODE_PIN}" }}'),
)

# Everything Postfix reads, one "section key = value" line each.
SNAPSHOT = r"""
postconf -n | sed 's/^/main.cf /'
postconf -M | awk '{ name = $1 "/" $2; $1 = $1; print "master.cf " name " = " $0 }'
postconf -F | sed 's/^/field /'
for db in /etc/postfix/oignons-mail/*.db; do
    [ -e "$db" ] || continue
    table=${db%.db}
    # postalias adds the build time as YP_LAST_MODIFIED (NIS's entries): not a lookup.
    postmap -s "hash:$table" |
        awk -v table="${table##*/}" '$1 !~ /^YP_/ { key = $1; $1 = ""; print "table " table ":" key " =" $0 }'
done
"""


def snapshot(system: DebianSystem, what: str) -> dict[str, str]:
    """What Postfix reads, as {"section key": value}."""
    lines = system.run(SNAPSHOT).check(f"snapshot {what}").stdout.splitlines()
    return dict(line.partition(" = ")[::2] for line in lines)


def next_site(work: Path) -> Path:
    text = TEST_SITE.read_text(encoding="utf-8")
    for old, new in NEXT_SITE_EDITS:
        assert text.count(old) == 1, f"the test site changed: {old!r} is not in {TEST_SITE} exactly once"
        text = text.replace(old, new)
    site = work / "site.toml"
    site.write_text(text, encoding="utf-8")
    return site


@dataclass
class Journey:
    package: str
    before: dict[str, str]
    fresh_n: dict[str, str]
    after_postfix_reinstall: dict[str, str]
    upgraded: dict[str, str]
    removed_after_upgrade: dict[str, str]
    fresh_next: dict[str, str]
    downgraded: dict[str, str]
    removed_after_downgrade: dict[str, str]
    local_upgrade: Result
    local_lookup: str
    purged: dict[str, str]
    purge: Result
    leftovers: str


@pytest.fixture(scope="module", params=PACKAGE_RELEASES, ids=package_release_id)
def journey(request: pytest.FixtureRequest, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    package, release = request.param
    work = tmp_path_factory.mktemp(package)
    base = package_file(dist, package)
    version = base.name.split("_")[1]
    with configured_postfix(release, ADMIN_CONFIGURATION + PRESEED_NODE_NAME) as system:
        n = copy_package(system, package_for_site(base, TEST_SITE, f"{version}+test1", work))
        following = copy_package(system, package_for_site(base, next_site(work), f"{version}+test2", work))

        def step(command: str) -> Result:
            return system.run(f"apt-get {command}").check(f"apt-get {command}")

        before = snapshot(system, "before")
        step(f"install -y -q --no-install-recommends {n}")
        fresh_n = snapshot(system, "N")
        step("install -y -q --reinstall postfix")
        after_postfix_reinstall = snapshot(system, "N, postfix reinstalled")
        step(f"install -y -q {following}")
        upgraded = snapshot(system, "N+1 after N")
        step(f"remove -y -q {package}")
        removed_after_upgrade = snapshot(system, "removed")
        step(f"install -y -q --no-install-recommends {following}")
        fresh_next = snapshot(system, "N+1")
        step(f"install -y -q --allow-downgrades {n}")
        downgraded = snapshot(system, "N after N+1")
        step(f"remove -y -q {package}")
        removed_after_downgrade = snapshot(system, "removed")
        # A local alias, then an upgrade as unattended-upgrades runs it: no
        # conffile question may come up, and the alias stays in force.
        step(f"install -y -q --no-install-recommends {n}")
        system.run("echo 'root: admin@example.org' >> /etc/postfix/oignons-mail/aliases.local && newaliases").check(
            "a local alias"
        )
        local_upgrade = system.run(f"apt-get install -y -q {following} </dev/null").check("upgrade with a local alias")
        local_lookup = system.run("postmap -q root $(postconf -xh alias_maps | tr ',' ' ')").check("lookup").stdout
        purge = step(f"purge -y -q {package}")
        purged = snapshot(system, "purged")
        leftovers = system.run(
            f"ls -A /etc/postfix/oignons-mail; ls -A /etc/postfix | grep -c stage; ls -d /var/lib/{package} 2>&1;"
            " cat /etc/postfix/oignons-mail/aliases.local"
        ).stdout
        yield Journey(
            package,
            before,
            fresh_n,
            after_postfix_reinstall,
            upgraded,
            removed_after_upgrade,
            fresh_next,
            downgraded,
            removed_after_downgrade,
            local_upgrade,
            local_lookup.strip(),
            purged,
            purge,
            leftovers,
        )


def differences(actual: dict[str, str], expected: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """Every key whose value differs: (actual, expected); None for a missing key."""
    return {
        key: (actual.get(key), expected.get(key))
        for key in sorted(actual.keys() | expected.keys())
        if actual.get(key) != expected.get(key)
    }


def test_version_n_changes_the_configuration(journey: Journey) -> None:
    assert differences(journey.fresh_n, journey.before)


def test_the_versions_differ_as_the_sites_do(journey: Journey) -> None:
    changed = differences(journey.fresh_next, journey.fresh_n)
    if journey.package == "oignons-mail-smarthost":
        assert set(changed) == {"main.cf smtp_tls_fingerprint_cert_match"}
        return
    # The administrator's yahoo service is back, unchrooted as every service.
    assert changed["master.cf yahoo/unix"] == (
        "yahoo unix - - n - 1 smtp",
        "yahoo unix - - n - 5 smtp -o syslog_name=postfix/yahoo",
    )
    assert changed["main.cf yahoo_destination_rate_delay"] == ("5s", "1s")
    assert changed["main.cf yahoo_destination_recipient_limit"] == (None, "2")
    assert changed["master.cf schleuder/unix"][0] is None
    assert changed["table transport:yahoo.com"] == (None, "yahoo:")
    assert changed["table schleuder:machines@nos-oignons.net"] == (None, "schleuder:")
    assert changed["master.cf gmail/unix"][1] is None
    assert changed["main.cf slow_destination_rate_delay"] == ("3s", "2s")
    assert changed[f"table relay_clientcerts:{NODE_PIN}"] == ("marcuse", None)


def test_reinstalling_postfix_changes_nothing_master_cf_included(journey: Journey) -> None:
    assert differences(journey.after_postfix_reinstall, journey.fresh_n) == {}


def test_an_upgrade_gives_what_a_fresh_install_gives(journey: Journey) -> None:
    assert differences(journey.upgraded, journey.fresh_next) == {}


def test_a_downgrade_gives_what_a_fresh_install_gives(journey: Journey) -> None:
    assert differences(journey.downgraded, journey.fresh_n) == {}


def test_removal_after_an_upgrade_gives_back_the_state_before(journey: Journey) -> None:
    assert differences(journey.removed_after_upgrade, journey.before) == {}


def test_removal_after_a_downgrade_gives_back_the_state_before(journey: Journey) -> None:
    assert differences(journey.removed_after_downgrade, journey.before) == {}


def test_an_upgrade_never_asks_about_a_configuration_file(journey: Journey) -> None:
    output = journey.local_upgrade.stdout + journey.local_upgrade.stderr
    assert "Configuration file" not in output, output
    assert "conffile" not in output, output


def test_a_local_alias_survives_the_upgrade_and_wins(journey: Journey) -> None:
    assert journey.local_lookup == "admin@example.org"


def test_purge_gives_back_the_state_before_and_keeps_the_local_aliases(journey: Journey) -> None:
    assert differences(journey.purged, journey.before) == {}
    assert "keeping /etc/postfix/oignons-mail/aliases.local, which has your aliases" in journey.purge.stderr
    assert journey.leftovers.splitlines() == [
        "aliases.local",
        "0",
        f"ls: cannot access '/var/lib/{journey.package}': No such file or directory",
        "root: admin@example.org",
    ], journey.leftovers
