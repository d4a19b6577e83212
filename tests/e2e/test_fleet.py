"""The fleet, for real (issue 9): a signed repository, a relay and two nodes of different releases.

The tests run in this order and build on each other (one fleet for the
module): bootstrap, release N+1 through unattended-upgrade (one node after
the others: `oignons-mail fleet --expect-version` names it behind until it
has it, from the nodes' heartbeats), the relay's key
rotation while the nodes keep sending, rollback of one node, a repository that
does not verify, a local edit of a node's aliases across an unattended upgrade,
the repository's signing key rotated (docs/fleet.md's four steps).
Each step's apt and unattended-upgrade output goes to build/e2e-fleet/run/steps.txt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from oignons_mail import repo
from tests.e2e.fleet import (
    DKIM_SELECTOR,
    DKIM_SIGNING_CONFFILE,
    LOCAL_ALIASES,
    NEW_USER_TO_ROOT,
    REPO_URI,
    SLOW_RATE,
    SMARTHOST_ALIASES,
    Fleet,
    FleetArtifacts,
    build_fleet_artifacts,
    fleet,
    fleet_base,
)
from tests.e2e.heartbeats import heartbeats_recorded
from tests.e2e.machines import Container, leftovers_of_run, reload_postfix, sweep_killed_runs, wait_until
from tests.e2e.mail import compose, wait_for_delivery
from tests.e2e.testbed import DOMAIN, LIST_ADDRESS, OUTSIDE_DOMAIN, TEST_ALIAS
from tests.system.debian_system import COMMAND_ENVIRONMENT

SMARTHOST = "oignons-mail-smarthost"
RELAY = "oignons-mail-relay"
DELIVERY_TIMEOUT = 120.0
UPGRADE_TIMEOUT = 600.0
# The rotation: each node sends a message every SEND_INTERVAL seconds meanwhile.
MESSAGES_PER_NODE = 20
SEND_INTERVAL = 3
ALIAS_RECIPIENT = f"{TEST_ALIAS[0]}@{DOMAIN}"
# The node that takes N+1 after the others (the fleet names it `behind` meanwhile).
LAGGING_NODE = "marcuse"  # the relay forwards it to the sink
LOCAL_ALIAS_LINE = "fleet-local-edit: root"
FLEET_BASES = (("relay", "trixie"), ("node", "bookworm"), ("node", "trixie"))


@pytest.fixture(scope="module")
def bed() -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("the fleet test boots containers and makes network namespaces: run it as root (make e2e)")
    for leftover in sweep_killed_runs():
        print(f"removed the leftover of a killed run: {leftover}")
    # The base systems first (cached; built the first time, two at a time), then the three releases.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for base in [pool.submit(fleet_base, role, release) for role, release in FLEET_BASES]:
            base.result()
    if _SETUP_FAILURE:
        pytest.fail(f"the fleet could not be set up (see the first test's error): {_SETUP_FAILURE[0]}")
    try:
        artifacts: FleetArtifacts = build_fleet_artifacts()
        with fleet(artifacts) as result:
            yield result
        # Signing the releases started a gpg-agent in the test's GnuPG home.
        subprocess.run(["gpgconf", "--homedir", str(artifacts.gnupg_home), "--kill", "all"],
                       capture_output=True, timeout=30, check=False)  # fmt: skip
        # The fleet undid all it made (the other e2e module's test beds come after it).
        leftovers = leftovers_of_run(os.getpid())
        if result.server.process is not None and result.server.process.poll() is None:
            leftovers.append(f"the web server, process {result.server.process.pid}")
        assert leftovers == [], "the fleet test left behind:\n" + "\n".join(leftovers)
    except Exception as error:
        # pytest would set a failed module fixture up again for every test: minutes each.
        _SETUP_FAILURE.append(str(error).splitlines()[0])
        raise


_SETUP_FAILURE: list[str] = []


def step(bed: Fleet, title: str, text: str) -> None:
    """Keep what a step printed (steps.txt) and show it with pytest -s."""
    block = f"=== {title}\n{text.rstrip()}\n"
    print(block)
    with (bed.run_directory / "steps.txt").open("a", encoding="utf-8") as steps:
        steps.write(block)


def version_of(container: Container, package: str) -> str:
    return container.check(f"dpkg-query -W -f='${{Version}}' {package}").strip()


def unattended_upgrade(bed: Fleet, container: Container) -> str:
    """apt-get update, then the real unattended-upgrade with the shipped snippet."""
    result = container.run("apt-get update -q && unattended-upgrade -v", timeout=UPGRADE_TIMEOUT)
    output = result.stdout + result.stderr
    step(bed, f"{container.hostname}: apt-get update && unattended-upgrade -v (status {result.returncode})", output)
    assert result.returncode == 0, output
    return output


def send(container: Container, recipient: str, message_id: str, subject: str) -> None:
    container.check(f"/usr/sbin/sendmail -oi {recipient}", input_text=compose(message_id, subject, message_id))


# The certificate port 25 presents now, as PEM (empty when the handshake fails).
PRESENTED_CERTIFICATE = (
    "openssl s_client -connect 127.0.0.1:25 -starttls smtp </dev/null 2>/dev/null | openssl x509 2>/dev/null || true"
)


def switch_relay_key(bed: Fleet, new: bool) -> None:
    """The relay's cert/key files replaced, then `postfix reload`; port 25 must present the chosen pair."""
    pair = bed.artifacts.relay_new if new else bed.artifacts.relay_old
    site = bed.relay.system
    for source, target in ((pair.certificate, "/etc/ssl/certs/ssl-cert-snakeoil.pem"),
                           (pair.key, "/etc/ssl/private/ssl-cert-snakeoil.key")):  # fmt: skip
        shutil.copyfile(source, site.root / target.lstrip("/"))
    reload_postfix(bed.relay)
    wanted = bed.relay.check("openssl x509 -in /etc/ssl/certs/ssl-cert-snakeoil.pem")
    assert bed.relay.run(PRESENTED_CERTIFICATE).stdout == wanted, (
        f"port 25 does not present the {'new' if new else 'old'} key"
    )


# --- 1. Bootstrap -----------------------------------------------------------------


def test_bootstrap_installs_the_smarthost_by_name_over_exim4(bed: Fleet) -> None:
    for name, node in bed.nodes.items():
        assert version_of(node, "exim4-daemon-light"), f"{name} does not start with exim4"
        script = f"""set -e
/usr/lib/apt/apt-helper download-file {REPO_URI}oignons-mail-archive-keyring.deb /root/keyring.deb
apt-get install -y /root/keyring.deb
echo '{SMARTHOST} {SMARTHOST}/hostname string {name}' | debconf-set-selections
apt-get update -q
apt-get install -y {SMARTHOST}
"""
        result = node.run(script, timeout=UPGRADE_TIMEOUT)
        step(bed, f"{node.hostname} ({node.release}): bootstrap (status {result.returncode})",
             result.stdout + result.stderr)  # fmt: skip
        result.check(f"bootstrap of {name}")
        assert version_of(node, SMARTHOST) == bed.artifacts.releases[0].version
        assert node.run("dpkg-query -W -f='${db:Status-Status}' exim4-daemon-light").stdout.strip() != "installed"
        bed.snapshots[name] = node.check("postconf -n")
    sent = {}
    for name, node in bed.nodes.items():
        message_id = f"bootstrap.{name}@e2e.{OUTSIDE_DOMAIN}"
        send(node, "root", message_id, f"fleet bootstrap {name}")
        sent[name] = message_id
    if bed.schleuder_error:
        pytest.fail(f"no Schleuder list to deliver to: {bed.schleuder_error}")
    for name, message_id in sent.items():
        at_the_list = rf"to=<{re.escape(LIST_ADDRESS)}>, relay=schleuder, .*status=sent"
        line = wait_for_delivery(bed, bed.relay, message_id, at_the_list, DELIVERY_TIMEOUT)
        step(bed, f"root's mail from {name} at the list", line)


# --- 2. A site change, N+1, through unattended-upgrade -------------------------------


def test_release_n1_reaches_nodes_and_relay_through_unattended_upgrade(bed: Fleet) -> None:
    n, n1 = bed.artifacts.releases[0], bed.artifacts.releases[1]
    bed.artifacts.publish(n1, bed.repository)
    # The relay and every node but LAGGING_NODE take N+1: `fleet --expect-version` names that one.
    for container in bed.systems():
        if container is not bed.nodes[LAGGING_NODE]:
            unattended_upgrade(bed, container)
    status, states = fleet_states(bed, n1.version)
    assert states == {host: (n.version, "behind") if host == LAGGING_NODE else (n1.version, "ok") for host in states}
    assert set(states) == {bed.artifacts.site.relay, *bed.nodes}
    assert status == 1
    unattended_upgrade(bed, bed.nodes[LAGGING_NODE])
    status, states = fleet_states(bed, n1.version)
    assert states == dict.fromkeys(states, (n1.version, "ok"))
    assert status == 0
    assert version_of(bed.relay, RELAY) == n1.version
    assert bed.relay.check("postconf -h slow_destination_rate_delay").strip() == SLOW_RATE[1]
    # A conffile N+1 changed took its new text without a question, and rspamd has the new key.
    new_selector = DKIM_SELECTOR[1]
    assert f'selector = "{new_selector}";' in bed.relay.check(f"cat {DKIM_SIGNING_CONFFILE}")
    assert bed.relay.check("ls /etc/rspamd/local.d | grep -c dpkg- || true").strip() == "0"
    assert bed.relay.run(f"test -s /var/lib/rspamd/dkim/{DOMAIN}.{new_selector}.key").returncode == 0
    for name, node in bed.nodes.items():
        assert version_of(node, SMARTHOST) == n1.version, name
        live = node.check("postconf -h smtp_tls_fingerprint_cert_match").strip()
        assert re.split(r"[\s,]+", live) == list(n1.pins), f"{name} pins {live!r}"
        step(bed, f"{name}: smtp_tls_fingerprint_cert_match after N+1", live)


def fleet_states(bed: Fleet, version: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """A heartbeat from each system, then `oignons-mail fleet --expect-version`: its status, host: (version, state)."""
    senders = {bed.artifacts.site.relay: bed.relay, **bed.nodes}
    records = heartbeats_recorded(bed.relay, senders)
    for name in bed.nodes:
        # Known by its pinned certificate (relay.node_pins), not by what its message says.
        assert records[name]["authenticated_by"] == "certificate", records[name]
    command = f"oignons-mail fleet --expect-version {version}"
    listing = bed.relay.run(command, timeout=60)
    step(bed, f"{bed.relay.hostname}: {command} (status {listing.returncode})", listing.stdout + listing.stderr)
    answer = bed.relay.run(f"{command} --json", timeout=60)
    assert answer.returncode == listing.returncode, answer.stderr
    entries = json.loads(answer.stdout)
    return answer.returncode, {entry["host"]: (entry["version"], entry["state"]) for entry in entries}


# --- 3. The relay's key rotation, without a lost message -------------------------------


SENDER_SCRIPT = """i=0
while [ $i -lt {count} ]; do
  i=$((i + 1))
  printf 'Message-Id: <rotation.{name}.%d@e2e>\\nSubject: fleet rotation {name} %d\\n\\nrotation\\n' $i $i |
    /usr/sbin/sendmail -oi {recipient}
  sleep {interval}
done
"""


def test_relay_key_rotation_loses_no_message(bed: Fleet) -> None:
    for name, node in bed.nodes.items():
        script = SENDER_SCRIPT.format(count=MESSAGES_PER_NODE, name=name, recipient=ALIAS_RECIPIENT,
                                      interval=SEND_INTERVAL)  # fmt: skip
        node.check(
            f"cat > /root/fleet-sender <<'EOF'\n{script}EOF\nsystemd-run --unit=fleet-sender sh /root/fleet-sender"
        )
    time.sleep(2 * SEND_INTERVAL)
    switch_relay_key(bed, new=True)  # N+1 pins both keys: the nodes go on sending
    step(bed, "bulbe: switched to the new key, postfix reload", "")
    time.sleep(2 * SEND_INTERVAL)
    bed.artifacts.publish(bed.artifacts.releases[2], bed.repository)  # N+2: only the new key
    for container in bed.systems():
        unattended_upgrade(bed, container)
    for name, node in bed.nodes.items():
        assert version_of(node, SMARTHOST) == bed.artifacts.releases[2].version, name

        def finished(node: Container = node) -> bool | None:
            return None if node.run("systemctl is-active --quiet fleet-sender").returncode == 0 else True

        wait_until(f"the sender on {name} to finish", finished, MESSAGES_PER_NODE * SEND_INTERVAL + 60, interval=2.0)
        node.check("postqueue -f")
    expected = {f"fleet rotation {name} {i}" for name in bed.nodes for i in range(1, MESSAGES_PER_NODE + 1)}

    def subjects() -> Counter[str]:
        found: Counter[str] = Counter()
        for message in bed.sink.messages_to(f"{TEST_ALIAS[0]}@{OUTSIDE_DOMAIN}"):
            subject = re.search(r"(?m)^Subject: (fleet rotation .*)$", message.data)
            if subject:
                found[subject.group(1).strip()] += 1
        return found

    wait_until("every rotation message at the sink", lambda: True if set(subjects()) >= expected else None,
               DELIVERY_TIMEOUT * 2, interval=2.0)  # fmt: skip
    time.sleep(5)  # a duplicate would come right after
    counts = subjects()
    duplicates = {s: c for s, c in counts.items() if c != 1}
    step(bed, "rotation: messages at the relay's destination",
         f"{len(counts)} unique subjects, {sum(counts.values())} messages, expected {len(expected)}; "
         f"duplicates: {duplicates}")  # fmt: skip
    assert set(counts) == expected
    assert duplicates == {}

    # A relay presenting the dropped key: the node's mail is deferred, never sent.
    switch_relay_key(bed, new=False)
    node = bed.nodes["marcuse"]
    message_id = f"stale-key@e2e.{OUTSIDE_DOMAIN}"
    send(node, ALIAS_RECIPIENT, message_id, "fleet stale key")
    line = wait_for_delivery(bed, node, message_id, r"status=deferred", DELIVERY_TIMEOUT)
    step(bed, "marcuse, relay back on the old key", line)
    assert "Server certificate not verified" in line
    assert not any("fleet stale key" in m.data for m in bed.sink.messages())
    switch_relay_key(bed, new=True)
    node.check("postqueue -f")
    wait_for_delivery(bed, node, message_id, r"status=sent", DELIVERY_TIMEOUT)


# --- 4. Rollback ---------------------------------------------------------------------------


def test_rollback_restores_n_settings_exactly(bed: Fleet) -> None:
    node = bed.nodes["marcuse"]
    n = bed.artifacts.releases[0].version
    result = node.run(f"apt-get install -y --allow-downgrades {SMARTHOST}={n}", timeout=UPGRADE_TIMEOUT)
    step(bed, f"marcuse: apt-get install --allow-downgrades {SMARTHOST}={n} (status {result.returncode})",
         result.stdout + result.stderr)  # fmt: skip
    result.check("rollback")
    assert version_of(node, SMARTHOST) == n
    assert node.check("postconf -n") == bed.snapshots["marcuse"]


# --- 5. A repository that does not verify ----------------------------------------------------


def node_state(node: Container) -> str:
    return node.check(
        "dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' | md5sum;"
        " md5sum /etc/postfix/main.cf /etc/postfix/master.cf /etc/apt/sources.list.d/*;"
        " find /var/lib/apt/lists -maxdepth 1 -type f ! -name lock | sort | xargs md5sum"
    )


def test_repository_that_does_not_verify_is_refused(bed: Fleet) -> None:
    suite = bed.repository / "dists" / "stable"
    saved = {name: (suite / name).read_bytes() for name in ("InRelease", "Release", "Release.gpg")}
    stranger = bed.artifacts.work / "stranger-gnupg"
    try:
        # a) A tampered InRelease (its signed text changed).
        tampered = saved["InRelease"].replace(b"Label: oignons-mail", b"Label: oignons-mail-tampered", 1)
        assert tampered != saved["InRelease"]
        (suite / "InRelease").write_bytes(tampered)
        _assert_refused(bed, bed.nodes["ekumen"], "tampered InRelease")
        # b) Signed by another key.
        stranger.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(stranger), "--batch", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-generate-key", "stranger <s@elsewhere.test>", "ed25519", "sign", "never"],
                       check=True, capture_output=True, env=COMMAND_ENVIRONMENT, timeout=60)  # fmt: skip
        signed = subprocess.run([*gpg, "--clearsign"], input=saved["Release"], check=True, capture_output=True,
                                env=COMMAND_ENVIRONMENT, timeout=60).stdout  # fmt: skip
        (suite / "InRelease").write_bytes(signed)
        (suite / "Release.gpg").unlink()
        _assert_refused(bed, bed.nodes["marcuse"], "InRelease signed by another key")
    finally:
        for name, content in saved.items():
            (suite / name).write_bytes(content)
        shutil.rmtree(stranger, ignore_errors=True)


def _assert_refused(bed: Fleet, node: Container, what: str) -> None:
    before = node_state(node)
    result = node.run("apt-get update --error-on=any", timeout=300)
    output = result.stdout + result.stderr
    step(bed, f"{node.hostname} ({node.release}): apt-get update --error-on=any, {what} (status {result.returncode})",
         output)  # fmt: skip
    assert result.returncode != 0, output
    assert re.search(r"(BADSIG|NO_PUBKEY|sqv|not signed|signature)", output), output
    assert node_state(node) == before, f"{what}: the node changed"


# --- 6. A local edit of the aliases across an unattended upgrade -------------------------------


def test_local_alias_edit_survives_unattended_upgrade(bed: Fleet) -> None:
    node = bed.nodes["marcuse"]  # rolled back to N above: N+2 (with N+1's change) is ahead
    # The administrator's own aliases go to aliases.local, which no package ships;
    # not rebuilt here: the upgrade's postinst rebuilds an edited aliases.local itself.
    node.check(f"echo '{LOCAL_ALIAS_LINE}' >> {LOCAL_ALIASES}")
    local_name, _, local_target = LOCAL_ALIAS_LINE.partition(": ")
    assert node.run(f"postalias -q {local_name} hash:{LOCAL_ALIASES}").returncode != 0, "aliases.local was rebuilt"
    output = unattended_upgrade(bed, node)
    latest = bed.artifacts.releases[2]
    assert version_of(node, SMARTHOST) == latest.version, f"unattended-upgrade did not take {latest.version}:\n{output}"
    assert LOCAL_ALIAS_LINE in node.check(f"cat {LOCAL_ALIASES}")
    assert node.check(f"postalias -q {local_name} hash:{LOCAL_ALIASES}").strip() == local_target
    assert node.check(f"postalias -q {NEW_USER_TO_ROOT} hash:{SMARTHOST_ALIASES}").strip(), "N+1's alias is not live"
    live = node.check("postconf -h smtp_tls_fingerprint_cert_match").strip()
    assert re.split(r"[\s,]+", live) == list(latest.pins)


# --- 7. The repository's signing key rotated (docs/fleet.md's four steps) --------------------

# The rotation's releases change only the keyring package: the same site packages, published again.
ROTATION_VERSIONS = ("+keys1", "+keys2", "+keys3")


def trusted_fingerprints(container: Container) -> list[str]:
    """The keys in the installed keyring package's keyring (read on the host: no gpg on the nodes)."""
    keyring = container.system.root / repo.KEYRING_PATH.lstrip("/")
    output = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--show-keys", str(keyring)],
        check=True, capture_output=True, text=True, env=COMMAND_ENVIRONMENT, timeout=60,
    ).stdout  # fmt: skip
    return sorted(line.split(":")[9] for line in output.splitlines() if line.startswith("fpr:"))


def publish_keyring(bed: Fleet, suffix: str, signing_key: str | None) -> str:
    """A release of the same packages with a new keyring package, as `make repo OIGNONS_MAIL_SIGNING_KEY=...`."""
    latest = bed.artifacts.releases[-1]
    version = latest.version + suffix
    repo.publish(list(latest.debs), bed.repository, archive=bed.artifacts.archive, version=version,
                 date=bed.artifacts.date, home=bed.artifacts.gnupg_home, wanted_key=signing_key)  # fmt: skip
    return version


def test_the_repository_signing_key_rotates_without_locking_a_node_out(bed: Fleet) -> None:
    home = ["gpg", "--homedir", str(bed.artifacts.gnupg_home), "--batch", "--passphrase", ""]
    (old,) = repo.secret_key_fingerprints(bed.artifacts.gnupg_home)
    # 1. The new key beside the old one (docs/fleet.md's command).
    user_id = repo.SIGNING_KEY_USER_ID.format(origin=bed.artifacts.archive.origin)
    subprocess.run([*home, "--yes", "--quick-generate-key", user_id, "ed25519", "sign", "never"],
                   check=True, capture_output=True, env=COMMAND_ENVIRONMENT, timeout=60)  # fmt: skip
    (new,) = [key for key in repo.secret_key_fingerprints(bed.artifacts.gnupg_home) if key != old]
    both = sorted([old, new])
    # 2. Signed with the old key: the transition keyring, carrying both. The relay and ekumen take it;
    #    marcuse misses it (an administrator who did not wait for every node).
    transition = publish_keyring(bed, ROTATION_VERSIONS[0], old)
    lagging = bed.nodes[LAGGING_NODE]
    current = [bed.relay, *(node for name, node in bed.nodes.items() if name != LAGGING_NODE)]
    for container in current:
        unattended_upgrade(bed, container)
        assert version_of(container, repo.KEYRING_PACKAGE) == transition
        assert trusted_fingerprints(container) == both, container.hostname
    # 3. Signed with the new key: the hosts with the transition keyring trust it ...
    signed_new = publish_keyring(bed, ROTATION_VERSIONS[1], new)
    for container in current:
        unattended_upgrade(bed, container)
        assert version_of(container, repo.KEYRING_PACKAGE) == signed_new
    # ... and the node without it is told so by apt, loudly, and nothing on it changes.
    _assert_refused(bed, lagging, "InRelease signed by the new key, before the transition keyring")
    # The way back (docs/fleet.md): the repository's current keyring package, installed by hand as at the bootstrap.
    lagging.check(
        f"/usr/lib/apt/apt-helper download-file {REPO_URI}{repo.KEYRING_PACKAGE}.deb /root/keyring.deb"
        " && apt-get install -y -q /root/keyring.deb",
        timeout=UPGRADE_TIMEOUT,
    )
    assert trusted_fingerprints(lagging) == both
    unattended_upgrade(bed, lagging)
    # 4. The old key deleted: the next keyring package carries the new key only.
    subprocess.run([*home, "--yes", "--delete-secret-and-public-key", old],
                   check=True, capture_output=True, env=COMMAND_ENVIRONMENT, timeout=60)  # fmt: skip
    final = publish_keyring(bed, ROTATION_VERSIONS[2], None)
    for container in bed.systems():
        unattended_upgrade(bed, container)
        assert version_of(container, repo.KEYRING_PACKAGE) == final, container.hostname
        assert trusted_fingerprints(container) == [new], container.hostname
        result = container.run("apt-get update --error-on=any", timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
