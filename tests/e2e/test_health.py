"""Fleet health on booted systems: heartbeats over the real path, `oignons-mail fleet`, `status`, reports.

One relay and one node (the test bed of the other e2e files, with the tool's
package installed on both), each release pair once.  Each heartbeat is sent
by `systemctl start oignons-mail-heartbeat.service`, through the node's own
Postfix and pinned TLS, to the relay's heartbeat address.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

from oignons_mail import health
from tests.e2e import heartbeats
from tests.e2e.conftest import PAIRS, reported_testbed
from tests.e2e.machines import wait_until
from tests.e2e.mail import final_reply, replies, wait_for_delivery
from tests.e2e.test_mail import reconfigure_pins
from tests.e2e.testbed import DOMAIN, OUTSIDE_DOMAIN, SMARTHOST_NAME, Artifacts, Testbed

HEARTBEAT_ADDRESS = f"heartbeat@{DOMAIN}"
RELAY_NAME = "bulbe"
STATE = health.STATE_DIRECTORY
WRONG_PIN = ":".join(["00"] * 20)
UNITS = {
    "relay": (
        "oignons-mail-heartbeat.service",
        "oignons-mail-heartbeat.timer",
        "oignons-mail-fleet-report.service",
        "oignons-mail-fleet-report.timer",
        "oignons-mail-fleet-report.path",
    ),
    "smarthost": ("oignons-mail-heartbeat.service", "oignons-mail-heartbeat.timer"),
}


@pytest.fixture(scope="module", params=PAIRS, ids=[f"relay-{r}+smarthost-{s}" for r, s in PAIRS])
def bed(request: pytest.FixtureRequest, artifacts: Artifacts) -> Iterator[Testbed]:
    with reported_testbed(artifacts, request.param, with_tool=True) as result:
        for container in (result.relay, result.smarthost):
            container.check(f"mkdir -p {health.PROMETHEUS_DIRECTORY}")
        yield result


def note(bed: Testbed, what: str, text: str) -> None:
    """What a case printed, for the run's report.txt."""
    bed.notes.append(f"[{bed.name}] {what}:\n" + "\n".join(f"    {line}" for line in text.splitlines()))


def record_of(bed: Testbed, host: str) -> str:
    return heartbeats.record_of(bed.relay, host)


def wait_for_new_record(bed: Testbed, host: str, before: str) -> dict[str, Any]:
    return heartbeats.wait_for_new_record(bed.relay, host, before)


def fleet(bed: Testbed, *options: str) -> tuple[int, str]:
    result = bed.relay.run(f"oignons-mail fleet {' '.join(options)}", timeout=60)
    note(bed, f"oignons-mail fleet {' '.join(options)} (exit {result.returncode})", result.stdout + result.stderr)
    return result.returncode, result.stdout


def test_units_verify_clean(bed: Testbed) -> None:
    for role, container in (("relay", bed.relay), ("smarthost", bed.smarthost)):
        result = container.run(f"systemd-analyze verify {' '.join(UNITS[role])}", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "oignons-mail" not in result.stdout + result.stderr, result.stdout + result.stderr
        timers = container.check("systemctl list-timers --all --no-pager oignons-mail-heartbeat.timer")
        assert "oignons-mail-heartbeat.timer" in timers, timers
    assert bed.relay.check("systemctl is-active oignons-mail-fleet-report.path").strip() == "active"


def test_heartbeats_arrive_and_the_fleet_lists_them(bed: Testbed) -> None:
    records = heartbeats.heartbeats_recorded(bed.relay, {SMARTHOST_NAME: bed.smarthost, RELAY_NAME: bed.relay})
    node, relay = records[SMARTHOST_NAME], records[RELAY_NAME]
    # The node's name came from its certificate (relay.node_pins), the relay's from itself.
    assert node["authenticated_by"] == "certificate", node
    assert relay["authenticated_by"] == "local", relay
    status, output = fleet(bed, "--json")
    hosts = {entry["host"]: entry for entry in json.loads(output)}
    version = bed.smarthost.check("dpkg-query -W -f='${Version}' oignons-mail-smarthost").strip()
    assert set(hosts) == {SMARTHOST_NAME, RELAY_NAME}
    for host in hosts.values():
        assert (host["version"], host["state"]) == (version, "ok"), host
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", host["last_heard"]), host
    assert status == 0
    fleet(bed)


def test_prometheus_files_parse(bed: Testbed) -> None:
    parser: Any = importlib.import_module("prometheus_client.parser")
    bed.relay.check("oignons-mail fleet --report", timeout=60)
    found = {}
    for container, name in ((bed.smarthost, health.PROMETHEUS_FILE), (bed.relay, health.FLEET_PROMETHEUS_FILE)):
        text = container.check(f"cat {health.PROMETHEUS_DIRECTORY}/{name}")
        note(bed, f"{container.machine}: {name}", text)
        for family in parser.text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert found[("oignons_mail_queue_messages", (("queue", "deferred"),))] >= 0
    assert abs(found[("oignons_mail_heartbeat_sent_timestamp_seconds", ())] - time.time()) < 3600
    assert found[("oignons_mail_fleet_hosts", (("state", "ok"),))] == 2


def test_an_outside_client_cannot_send_to_the_heartbeat_address(bed: Testbed) -> None:
    result = bed.swaks("--from", f"someone@{OUTSIDE_DOMAIN}", "--to", HEARTBEAT_ADDRESS)
    note(bed, "swaks from outside to the heartbeat address", "\n".join(replies(result.stdout)))
    assert final_reply(result.stdout, "550 5.1.1"), replies(result.stdout)
    assert "User unknown in local recipient table" in result.stdout


def hostile_inputs(recorded: dict[str, Any]) -> dict[str, str]:
    """Each hostile heartbeat as a sh command writing the message (bytes that are not UTF-8 included)."""
    heartbeat = health.Heartbeat(**recorded["heartbeat"])
    body = health.compose_body(heartbeat)
    evil = body.replace(f"host: {heartbeat.host}", "host: ../../etc/cron.d/x")
    oversized = 2 * health.MAX_HEARTBEAT_BYTES
    return {
        "not UTF-8": "printf 'Subject: x\\n\\noignons-mail-heartbeat: 1\\nhost: marc\\377use\\n'",
        "oversized": f"{{ printf 'Subject: x\\n\\n'; head -c {oversized} /dev/zero | tr '\\0' x; }}",
        "malformed": "printf 'Subject: x\\n\\noignons-mail-heartbeat: 1\\nhost: bulbe\\ncolour: blue\\n'",
        "not a host name": f"printf '%s' {shlex.quote('Subject: x' + chr(10) * 2 + evil)}",
        "replayed": f"printf '%s' {shlex.quote('Subject: x' + chr(10) * 2 + body)}",
    }


def drops(bed: Testbed) -> int:
    log = bed.relay.run(f"journalctl --no-pager -q -o cat -t {health.LOG_TAG}").stdout
    return sum("dropped:" in line for line in log.splitlines())


def test_hostile_heartbeats_leave_the_state_as_it_was(bed: Testbed) -> None:
    before = {host: record_of(bed, host) for host in (SMARTHOST_NAME, RELAY_NAME)}
    listing = bed.relay.check(f"ls -la --time-style=full-iso {STATE}")
    for label, command in hostile_inputs(json.loads(before[RELAY_NAME])).items():
        count = drops(bed)
        bed.relay.check(f"{command} | /usr/sbin/sendmail -oi {HEARTBEAT_ADDRESS}")
        wait_until(
            f"the receiver to drop the {label} heartbeat",
            lambda count=count: True if drops(bed) > count else None,  # type: ignore[misc]
            heartbeats.HEARTBEAT_WAIT,
        )
        last = bed.relay.check(f"journalctl --no-pager -q -o cat -t {health.LOG_TAG} | grep dropped: | tail -n 1")
        note(bed, f"hostile heartbeat ({label})", last)
    assert {host: record_of(bed, host) for host in before} == before
    assert bed.relay.check(f"ls -la --time-style=full-iso {STATE}") == listing
    # Nothing bounced: the relay's queue holds no bounce.
    assert "MAILER-DAEMON" not in bed.relay.check("postqueue -p")


def test_a_node_cannot_claim_another_name(bed: Testbed) -> None:
    """A forged copy of the relay's header in the node's own message counts for nothing (header order)."""
    recorded = json.loads(record_of(bed, SMARTHOST_NAME))
    heartbeat = health.Heartbeat(
        **{**recorded["heartbeat"], "host": RELAY_NAME, "time": health.format_time(time.time())}
    )
    message = f"{health.NODE_HEADER}: {RELAY_NAME}\nSubject: forged\n\n{health.compose_body(heartbeat)}"
    before = record_of(bed, SMARTHOST_NAME)
    relay_before = record_of(bed, RELAY_NAME)
    bed.smarthost.check(f"/usr/sbin/sendmail -oi {HEARTBEAT_ADDRESS}", input_text=message)
    record = wait_for_new_record(bed, SMARTHOST_NAME, before)
    assert record["authenticated_by"] == "certificate"
    assert record["heartbeat"]["host"] == RELAY_NAME  # what it claimed, recorded under its certificate's name
    assert record_of(bed, RELAY_NAME) == relay_before


def late_fleet(bed: Testbed) -> str | None:
    status, output = fleet(bed, "--late-after", "1s")
    return output if status == 1 else None


def test_wrong_pin_then_late_then_recovered(bed: Testbed) -> None:
    right = bed.smarthost.check("postconf -h smtp_tls_fingerprint_cert_match").strip()
    reconfigure_pins(bed, WRONG_PIN)
    try:
        heartbeats.send_heartbeat(bed.smarthost)
        wait_until(
            "the heartbeat deferred on the node",
            lambda: (
                bed.smarthost.run(
                    "journalctl --no-pager -q --facility=mail -o cat"
                    f" | grep 'to=<{HEARTBEAT_ADDRESS}>.*status=deferred.*Server certificate not verified'"
                ).stdout
                or None
            ),
            heartbeats.HEARTBEAT_WAIT,
        )
        result = bed.smarthost.run("oignons-mail status", timeout=60)
        note(bed, f"node: oignons-mail status (exit {result.returncode})", result.stdout + result.stderr)
        assert result.returncode == 1
        pin_line = next(line for line in result.stdout.splitlines() if " relay-pin " in line)
        assert pin_line.startswith("fail relay-pin ")
        assert "Server certificate not verified" in pin_line
        # Late once more than a second has passed since its last heartbeat.
        output = wait_until("fleet --late-after 1s to exit 1", lambda: late_fleet(bed), 30)
        line = next(line for line in output.splitlines() if line.startswith(SMARTHOST_NAME))
        assert line.split()[-1] == "late", line
        report = bed.relay.run("oignons-mail fleet --report --late-after 1s", timeout=60)
        note(bed, "report while the node is late", report.stdout + report.stderr)
        assert report.returncode == 0, report.stderr
        assert f"{SMARTHOST_NAME}: became late (was ok)" in report.stdout
        message_id = re.search(r"mailed root: <([^>]+)>", report.stdout)
        assert message_id, report.stdout
        wait_for_delivery(bed, bed.relay, message_id.group(1), r"to=<machines@nos-oignons\.net>.*relay=schleuder")
    finally:
        reconfigure_pins(bed, right)
    before = record_of(bed, SMARTHOST_NAME)
    bed.smarthost.check("postqueue -f")
    wait_for_new_record(bed, SMARTHOST_NAME, before)
    # The path unit reports after each record the receiver writes: nothing to run by hand.
    recovered = f"{SMARTHOST_NAME}: recovered (was late)"

    def reported() -> str | None:
        log = bed.relay.check("journalctl --no-pager -q -o cat -u oignons-mail-fleet-report.service")
        after = log.split(recovered, 1)[1] if recovered in log else ""
        return after if "mailed root" in after else None

    report_lines = wait_until(
        "the report after the heartbeat to say the node recovered", reported, heartbeats.HEARTBEAT_WAIT
    )
    note(bed, "report after the pin was fixed (oignons-mail-fleet-report.service)", recovered + report_lines)
    message_id = re.search(r"mailed root: <([^>]+)>", report_lines)
    assert message_id, report_lines
    wait_for_delivery(bed, bed.relay, message_id.group(1), r"to=<machines@nos-oignons\.net>.*relay=schleuder")
    assert bed.smarthost.run("oignons-mail status").returncode == 0


def test_expect_version_names_older_hosts_behind(bed: Testbed) -> None:
    status, output = fleet(bed, "--expect-version", "999")
    assert status == 1
    states = {line.split()[0]: line.split()[-1] for line in output.splitlines()[1:]}
    assert states == {RELAY_NAME: "behind", SMARTHOST_NAME: "behind"}
    version = bed.relay.check("dpkg-query -W -f='${Version}' oignons-mail-relay").strip()
    assert fleet(bed, "--expect-version", version)[0] == 0


def test_status_on_the_relay(bed: Testbed) -> None:
    started = time.monotonic()
    result = bed.smarthost.run("oignons-mail status --json")
    note(bed, f"node: oignons-mail status --json in {time.monotonic() - started:.2f} s", result.stdout)
    relay = bed.relay.run("oignons-mail status", timeout=60)
    note(bed, f"relay: oignons-mail status (exit {relay.returncode})", relay.stdout + relay.stderr)
    levels = {line.split()[1]: line.split()[0] for line in relay.stdout.splitlines()}
    for name in ("postfix", "applied", "confinement", "rspamd", "dkim", "resolver", "certificate"):
        assert levels.get(name) in ("ok", "warn"), relay.stdout
    assert levels["confinement"] == "ok"
    assert levels["rspamd"] == "ok"
