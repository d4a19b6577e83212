"""Upgrade, removal and reinstallation of the relay package on the running relay, under load.

While a client keeps submitting messages to the relay, the relay package goes
N -> N+1 with apt (N+1: the same site, a changed slow-transport rate), is
removed, then installed again.  Every message the relay accepted (2xx at
DATA) reaches the sink exactly once; the confinement drop-in is active after
the upgrade, and after the removal the Postfix unit is the stock one again.

The client submits on the relay's loopback to an outside address: both with
and without the package, Postfix relays for its own host (mynetworks) and the
sink is the outside domain's MX, so the one thing this measures is what the
package's maintainer scripts do to mail in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.machines import master_pid, wait_until
from tests.e2e.mail import header
from tests.e2e.testbed import MAX_EXPOSURE, OUTSIDE_DOMAIN, Testbed
from tests.system.conftest import next_version
from tests.system.debian_system import COMMAND_ENVIRONMENT

PACKAGE = "oignons-mail-relay"
RATE_KEY, RATE_FROM, RATE_TO = "slow_destination_rate_delay", "2s", "3s"
# N+1 also changes the banner: what a new smtpd(8) says shows that the running daemons read it.
BANNER_KEY, BANNER_MARK = "smtpd_banner", " (N+1)"
BANNER_WAIT = 10.0
RECIPIENT = f"e2e-live@{OUTSIDE_DOMAIN}"
MINIMUM_MESSAGES = 200
CLIENT_INTERVAL_SECONDS = 0.2
SETTLE_SECONDS = 4.0  # the client's time in each settled state between steps
# The client is serial: a session that began before a restart can outlast
# SETTLE_SECONDS (seen: about 10 s), so a settled state lasts until one
# attempt begun in it is accepted, or this many seconds.
SETTLE_TIMEOUT = 90.0
DELIVERY_TIMEOUT = 300.0
APT_TIMEOUT = 600.0

# The client: one SMTP session per message to 127.0.0.1:25 of the namespace
# it runs in (the relay's), until told to stop and at least `minimum` sent;
# one JSON line per attempt: its Message-Id, when it started and the reply at DATA (0 when the
# connection or an earlier command failed, e.g. while Postfix restarts).
CLIENT = r"""
import json, os, smtplib, sys, time
log_path, stop_path, minimum, interval, recipient = sys.argv[1:6]
sent = 0
with open(log_path, "a", encoding="utf-8") as log:
    while sent < int(minimum) or not os.path.exists(stop_path):
        message_id = f"live.{os.getpid()}.{sent}@e2e.elsewhere.test"
        message = (f"Message-Id: <{message_id}>\r\nSubject: e2e live {sent}\r\n"
                   f"From: <live@e2e.elsewhere.test>\r\nTo: <{recipient}>\r\n\r\nlive upgrade test {sent}\r\n")
        code, text, started = 0, "", time.time()
        try:
            with smtplib.SMTP("127.0.0.1", 25, timeout=30) as client:
                client.ehlo("live-client.bulbe.nos-oignons.net")
                client.mail("live@e2e.elsewhere.test")
                client.rcpt(recipient)
                code, reply = client.data(message.encode())
                text = reply.decode(errors="replace")
        except (OSError, smtplib.SMTPException) as error:
            text = repr(error)
        log.write(json.dumps({"message_id": message_id, "time": started, "code": code, "text": text}) + "\n")
        log.flush()
        sent += 1
        time.sleep(float(interval))
"""


@dataclass(frozen=True)
class Attempt:
    message_id: str
    time: float
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True)
class LiveCycle:
    attempts: list[Attempt]
    delivered: Counter[str]  # Message-Id -> how many times the sink got it
    upgraded_rate: str
    drop_ins_after_upgrade: str
    master_no_new_privs_after_upgrade: str
    exposure_after_upgrade: float
    drop_ins_after_removal: str
    exposure_after_removal: float
    stock_exposure: float
    active_after_removal: str
    master_no_new_privs_after_removal: str
    drop_ins_after_reinstall: str
    master_no_new_privs_after_reinstall: str
    master_pids: tuple[str, str]  # master(8)'s PID before and after the upgrade
    qmgr_pids: tuple[str, str]  # qmgr(8)'s, which only a reload (or a restart) replaces
    banners: tuple[str, str]  # the greeting of a new connection before the upgrade, and once it changed after
    steps: list[str]
    marks: list[tuple[str, float]]  # when each step began and ended

    def phase(self, attempt: Attempt) -> str:
        """The state of the relay when the attempt began: "before", "upgrade", "upgraded", ..."""
        return next((name for name, start in reversed(self.marks) if start <= attempt.time), "before")

    def summary(self) -> dict[str, Counter[str]]:
        """Per phase: how many attempts were accepted, and why the others were not."""
        phases: dict[str, Counter[str]] = {}
        for attempt in self.attempts:
            outcome = "accepted" if attempt.accepted else f"{attempt.code} {attempt.text[:70]}"
            phases.setdefault(self.phase(attempt), Counter())[outcome] += 1
        return phases


def apt(bed: Testbed, command: str) -> str:
    """Run apt-get on the relay; its output, also kept in the run directory for a post-mortem."""
    result = bed.relay.run(f"apt-get {command}", timeout=APT_TIMEOUT)
    output = result.stdout + result.stderr
    log = bed.run_directory / f"live-apt-{command.split(maxsplit=1)[0]}-{time.time():.0f}.log"
    log.write_text(output, encoding="utf-8")
    return result.check(f"apt-get {command} on the relay").stdout + result.stderr


def drop_ins(bed: Testbed) -> str:
    return bed.relay.check(f"systemctl show -p DropInPaths --value {bed.relay_unit}").strip()


def master_no_new_privs(bed: Testbed) -> str:
    """NoNewPrivs of the running master(8): 1 once it runs under our drop-in."""
    status = bed.relay.check(f"cat /proc/{master_pid(bed.relay)}/status")
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("NoNewPrivs:"))


def edit_rate(main_cf: str) -> str:
    """N+1's settings: the slow transport's rate, and the banner marked."""
    old = f"{RATE_KEY} = {RATE_FROM}"
    if old not in main_cf.splitlines():
        raise AssertionError(f"the relay's main.cf has no `{old}` line: update {__file__}")
    banner = next((line for line in main_cf.splitlines() if line.startswith(f"{BANNER_KEY} = ")), None)
    if banner is None:
        raise AssertionError(f"the relay's main.cf sets no {BANNER_KEY}: update {__file__}")
    return main_cf.replace(old, f"{RATE_KEY} = {RATE_TO}").replace(banner, banner + BANNER_MARK)


# A new connection's greeting, as a client reads it (from the relay's own loopback).
GREETING = (
    'python3 -c \'import socket; s = socket.create_connection(("127.0.0.1", 25), 10);'
    ' print(s.recv(512).decode().strip()); s.sendall(b"QUIT\\r\\n")\''
)


def greeting(bed: Testbed) -> str:
    return bed.relay.check(GREETING, timeout=30).strip()


def qmgr_pid(bed: Testbed) -> str:
    return bed.relay.check("pgrep -x qmgr").strip()


def upgrade_to_n1(
    bed: Testbed, path: str, steps: list[str], marks: list[tuple[str, float]]
) -> tuple[tuple[str, str], tuple[str, str]]:
    """apt-get install of N+1; qmgr(8)'s PID and a new connection's greeting, before and after."""
    qmgr_before, banner_before = qmgr_pid(bed), greeting(bed)
    marks.append(("upgrade", time.time()))
    steps.append(apt(bed, f"install -y -q {path}"))
    marks.append(("upgraded", time.time()))
    qmgr_after = qmgr_pid(bed)
    # The old smtpd processes finish their sessions, then exit: a few seconds at most.
    with contextlib.suppress(AssertionError):  # the test says what the greeting was
        wait_until("the new banner", lambda: greeting(bed) != banner_before or None, BANNER_WAIT)
    return (qmgr_before, qmgr_after), (banner_before, greeting(bed))


def read_attempts(path: Path) -> list[Attempt]:
    attempts = []
    # Only whole lines: the client may be writing the last one.
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        record = json.loads(line)
        attempts.append(
            Attempt(str(record["message_id"]), float(record["time"]), int(record["code"]), str(record["text"]))
        )
    return attempts


def settle(log_path: Path, since: float) -> None:
    """Let the client work in the state reached at `since`: a while, and until one of its attempts is accepted."""
    time.sleep(SETTLE_SECONDS)

    def accepted_since() -> Attempt | None:
        return next((a for a in read_attempts(log_path) if a.accepted and a.time >= since), None)

    with contextlib.suppress(AssertionError):  # the tests below say which state refused mail
        wait_until(f"an attempt accepted since {since:.1f}", accepted_since, SETTLE_TIMEOUT)


def delivered_counts(bed: Testbed) -> Counter[str]:
    return Counter(header(m.data, "Message-Id").strip("<>") for m in bed.sink.messages_to(RECIPIENT))


def wait_for_the_sink(bed: Testbed, accepted: set[str]) -> Counter[str]:
    """How many times the sink got each message, once every accepted one is there (or the time is up)."""
    # A delivery deferred by a restart waits for Postfix's next retry: ask for it now.
    bed.relay.check("postqueue -f")

    def all_delivered() -> Counter[str] | None:
        counts = delivered_counts(bed)
        return counts if accepted <= set(counts) else None

    with contextlib.suppress(AssertionError):  # the test below names what is missing
        wait_until(f"{len(accepted)} accepted messages at the sink", all_delivered, DELIVERY_TIMEOUT)
    time.sleep(5)  # a late duplicate would show now
    return delivered_counts(bed)


@pytest.fixture(scope="module")
def cycle(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> LiveCycle:
    return live_cycle(bed, tmp_path_factory.mktemp("live"))


def live_cycle(bed: Testbed, work: Path) -> LiveCycle:
    """N -> N+1, removal, reinstallation on the running relay while the client submits (also make bench's)."""
    upgrade = next_version(bed.artifacts.relay_deb, work, edit_rate)
    upgrade_path = bed.relay.system.copy_in(upgrade, f"/root/live/{upgrade.name}")
    assert bed.relay.check(f"postconf -h {RATE_KEY}").strip() == RATE_FROM
    stock = bed.stock_relay_exposure()

    log_path, stop_path = work / "client.jsonl", work / "stop"
    client = subprocess.Popen(
        ["ip", "netns", "exec", bed.network.relay, "/usr/bin/python3", "-c", CLIENT,
         str(log_path), str(stop_path), str(MINIMUM_MESSAGES), str(CLIENT_INTERVAL_SECONDS), RECIPIENT],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=COMMAND_ENVIRONMENT,
    )  # fmt: skip
    steps: list[str] = []
    marks: list[tuple[str, float]] = []
    try:
        settle(log_path, time.time())  # a few messages before the first step
        pid_before_upgrade = master_pid(bed.relay)
        qmgr_pids, banners = upgrade_to_n1(bed, upgrade_path, steps, marks)
        upgraded_rate = bed.relay.check(f"postconf -h {RATE_KEY}").strip()
        after_upgrade = drop_ins(bed)
        no_new_privs = master_no_new_privs(bed)
        pid_after_upgrade = master_pid(bed.relay)
        exposure_upgraded = bed.relay_exposure()
        settle(log_path, marks[-1][1])
        marks.append(("remove", time.time()))
        steps.append(apt(bed, f"remove -y -q {PACKAGE}"))
        marks.append(("removed", time.time()))
        after_removal = drop_ins(bed)
        exposure_removed = bed.relay_exposure()
        active_after_removal = bed.relay.run(f"systemctl is-active {bed.relay_unit}").stdout.strip()
        no_new_privs_removed = master_no_new_privs(bed)
        settle(log_path, marks[-1][1])
        marks.append(("reinstall", time.time()))
        steps.append(apt(bed, f"install -y -q {upgrade_path}"))
        marks.append(("reinstalled", time.time()))
        after_reinstall = drop_ins(bed)
        no_new_privs_reinstalled = master_no_new_privs(bed)
        settle(log_path, marks[-1][1])
        stop_path.touch()
        _, errors = client.communicate(timeout=300)
        assert client.returncode == 0, f"the SMTP client failed:\n{errors.decode(errors='replace')[-3000:]}"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)

    attempts = read_attempts(log_path)
    delivered = wait_for_the_sink(bed, {a.message_id for a in attempts if a.accepted})
    result = LiveCycle(
        attempts, delivered, upgraded_rate, after_upgrade, no_new_privs, exposure_upgraded, after_removal,
        exposure_removed, stock, active_after_removal, no_new_privs_removed, after_reinstall,
        no_new_privs_reinstalled, (pid_before_upgrade, pid_after_upgrade), qmgr_pids, banners,
        steps, marks,
    )  # fmt: skip
    note = f"{bed.name}: live upgrade/removal, attempts per phase: " + "; ".join(
        f"{phase}: {dict(outcomes)}" for phase, outcomes in result.summary().items()
    )
    note += "; longest time without an accepted message: " + ", ".join(
        f"{step} {longest_outage(result, step):.1f} s" for step in LIVE_STEPS
    )
    bed.notes.append(note)
    print(note)
    return result


def test_the_client_kept_submitting_through_every_step(cycle: LiveCycle) -> None:
    assert len(cycle.attempts) >= MINIMUM_MESSAGES
    summary = cycle.summary()
    # Mail flows in every settled state with the package: the old version, the new one, the new one again.
    for phase in ("before", "upgraded", "reinstalled"):
        assert summary.get(phase, Counter())["accepted"] > 0, f"nothing accepted while {phase}: {summary}"


# The steps of the cycle, each between its mark and the next one.
LIVE_STEPS = ("upgrade", "remove", "reinstall")


def longest_outage(cycle: LiveCycle, step: str) -> float:
    """The longest time, in seconds, between two accepted attempts around a step (its start to its end mark).

    make bench's figure (bench/live.py): how long port 25 turned clients away.
    """
    names = [name for name, _ in cycle.marks]
    start, end = cycle.marks[names.index(step)][1], cycle.marks[names.index(step) + 1][1]
    times = sorted(a.time for a in cycle.attempts if a.accepted)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times) if later >= start and earlier <= end]
    return max(gaps, default=0.0)


# The prerm reverts without a restart; the postrm restarts Postfix once the
# drop-in is gone (restarted by the prerm, still confined, the master could
# not chroot the stock services the revert brings back).
def test_mail_keeps_flowing_through_the_removal_and_postfix_runs_unconfined_after_it(cycle: LiveCycle) -> None:
    summary = cycle.summary()
    assert summary.get("removed", Counter())["accepted"] > 0, f"nothing accepted once removed: {summary}"
    assert cycle.master_no_new_privs_after_removal == "0", "master(8) still runs under the removed drop-in"


def test_every_accepted_message_is_delivered_once(cycle: LiveCycle) -> None:
    accepted = {a.message_id for a in cycle.attempts if a.accepted}
    lost = sorted(accepted - set(cycle.delivered))
    duplicated = sorted(i for i, n in cycle.delivered.items() if n > 1)
    assert (lost, duplicated) == ([], []), (
        f"{len(accepted)} accepted, {len(lost)} lost {lost[:10]}, {len(duplicated)} duplicated {duplicated[:10]}"
    )


def test_the_upgrade_applied_the_new_version(cycle: LiveCycle) -> None:
    assert cycle.upgraded_rate == RATE_TO


# N+1 changes settings only (the drop-in is the same): Postfix reloads, its
# master keeps the listening sockets, and no client is turned away.
def test_an_upgrade_of_settings_reloads_and_never_closes_port_25(cycle: LiveCycle) -> None:
    before, after = cycle.master_pids
    assert before == after, f"master(8) restarted during the upgrade (PID {before} -> {after})"
    # Reloaded, not left alone: qmgr(8) is new, and a new connection's smtpd(8) says N+1's banner.
    qmgr_before, qmgr_after = cycle.qmgr_pids
    assert qmgr_before != qmgr_after, f"qmgr(8) is the one from before the upgrade (PID {qmgr_before})"
    banner_before, banner_after = cycle.banners
    assert banner_after == banner_before + BANNER_MARK, cycle.banners
    upgrade = cycle.summary().get("upgrade", Counter())
    assert upgrade["accepted"] > 0, upgrade
    assert {outcome: n for outcome, n in upgrade.items() if outcome != "accepted"} == {}, upgrade


def test_the_confinement_drop_in_is_active_after_the_upgrade(cycle: LiveCycle) -> None:
    assert f"{PACKAGE}.conf" in cycle.drop_ins_after_upgrade, cycle.drop_ins_after_upgrade
    assert cycle.master_no_new_privs_after_upgrade == "1", "master(8) did not restart under the drop-in"
    assert cycle.exposure_after_upgrade <= MAX_EXPOSURE
    assert cycle.exposure_after_upgrade < cycle.stock_exposure


def test_after_removal_the_unit_is_the_stock_one(cycle: LiveCycle) -> None:
    assert f"{PACKAGE}.conf" not in cycle.drop_ins_after_removal, cycle.drop_ins_after_removal
    assert cycle.active_after_removal == "active"
    assert cycle.exposure_after_removal == cycle.stock_exposure


def test_installing_it_again_brings_the_drop_in_back(cycle: LiveCycle) -> None:
    assert f"{PACKAGE}.conf" in cycle.drop_ins_after_reinstall, cycle.drop_ins_after_reinstall
    assert cycle.master_no_new_privs_after_reinstall == "1", "master(8) was not restarted under the drop-in"


def test_a_refused_configuration_is_explained_from_the_journal(cycle: LiveCycle, bed: Testbed) -> None:
    """On a booted relay, `postfix check`'s reason (it logs to syslog only) is in postfix-apply's error."""
    data = f"/usr/share/{PACKAGE}/main.cf"
    apply = f"/usr/lib/{PACKAGE}/postfix-apply apply {PACKAGE}"
    before = bed.relay.check("cat /etc/postfix/main.cf /etc/postfix/master.cf | sha256sum")
    bed.relay.check(f"cp -p {data} {data}.good && echo 'mail_owner = no-such-user' >> {data}")
    try:
        refused = bed.relay.run(apply)
    finally:
        bed.relay.check(f"mv {data}.good {data}")
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "fails `postfix check'" in refused.stderr, refused.stderr
    assert "no-such-user" in refused.stderr, f"the reason is not quoted: {refused.stderr}"
    assert bed.relay.check("cat /etc/postfix/main.cf /etc/postfix/master.cf | sha256sum") == before
    bed.relay.check(apply)


# --- The restarts the README promises, on the running daemons ---------------

# The package's two copies of one drop-in (debian/rules): Postfix's master
# runs in postfix@-.service on bookworm, in postfix.service on trixie; the
# postinst compares the first one's digest with the record.
DROP_INS = tuple(f"/usr/lib/systemd/system/{unit}.service.d/{PACKAGE}.conf" for unit in ("postfix", "postfix@"))
CONFINED_BY = f"/var/lib/{PACKAGE}/confined-by"
# What the changed drop-in adds: a setting the running master(8) shows (its nice value).
DROP_IN_ADDITION, CHANGED_NICE = "Nice=3", "3"
RECONFIGURE = f"dpkg-reconfigure -f noninteractive {PACKAGE}"
SMARTHOST = "oignons-mail-smarthost"


@dataclass(frozen=True)
class Restarts:
    """Master PIDs and what they run under, around each step: (before, after)."""

    unchanged: tuple[str, str]  # the postinst again, the drop-in the same
    changed: tuple[str, str]  # the postinst with a changed drop-in
    nice_changed: str
    confined_by_changed: bool  # the record names the changed drop-in's digest
    restored: tuple[str, str]  # the package's drop-in back
    nice_restored: str


def master_nice(bed: Testbed) -> str:
    return bed.relay.check(f"ps -o ni= -p {master_pid(bed.relay)}").strip()


def drop_in_recorded(bed: Testbed) -> bool:
    return bed.relay.run(f"sha256sum < {DROP_INS[0]} | cmp -s - {CONFINED_BY}").returncode == 0


@pytest.fixture(scope="module")
def restarts(bed: Testbed, cycle: LiveCycle) -> Restarts:
    """After the cycle (N+1 installed): the postinst with the same drop-in, with a changed one, with it back.

    A new version's changed drop-in is the package's two files, replaced by
    dpkg before the postinst; here the same files are changed in place, then
    the postinst runs (dpkg-reconfigure).
    """
    first = master_pid(bed.relay)
    bed.relay.check(RECONFIGURE, timeout=APT_TIMEOUT)
    unchanged = (first, master_pid(bed.relay))
    for index, drop_in in enumerate(DROP_INS):
        bed.relay.check(
            f"cp -p {drop_in} /root/drop-in.{index} && printf '\\n[Service]\\n%s\\n' {DROP_IN_ADDITION} >> {drop_in}"
        )
    try:
        bed.relay.check(RECONFIGURE, timeout=APT_TIMEOUT)
        changed = (unchanged[1], master_pid(bed.relay))
        nice_changed, recorded = master_nice(bed), drop_in_recorded(bed)
    finally:
        for index, drop_in in enumerate(DROP_INS):
            bed.relay.check(f"cp -p /root/drop-in.{index} {drop_in}")
        bed.relay.check(RECONFIGURE, timeout=APT_TIMEOUT)
    restored = (changed[1], master_pid(bed.relay))
    return Restarts(unchanged, changed, nice_changed, recorded, restored, master_nice(bed))


def test_the_postinst_with_the_same_drop_in_does_not_restart_postfix(restarts: Restarts) -> None:
    before, after = restarts.unchanged
    assert before == after, f"master(8) restarted with its drop-in unchanged (PID {before} -> {after})"


def test_a_changed_drop_in_restarts_postfix_under_it(restarts: Restarts) -> None:
    before, after = restarts.changed
    assert before != after, f"master(8) was not restarted for the changed drop-in (PID {before})"
    assert restarts.nice_changed == CHANGED_NICE, (
        f"master(8) does not run under the changed drop-in: nice {restarts.nice_changed}"
    )
    assert restarts.confined_by_changed, f"{CONFINED_BY} does not name the changed drop-in"
    before, after = restarts.restored
    assert before != after, "master(8) was not restarted when the package's drop-in came back"
    assert restarts.nice_restored == "0", restarts.nice_restored


@dataclass(frozen=True)
class NodeListening:
    """The node's port 25 sockets (ss) and master PIDs: with the package, removed, installed again."""

    installed: tuple[str, str]
    removed: tuple[str, str]
    reinstalled: tuple[str, str]


def port_25_sockets(bed: Testbed) -> str:
    lines = bed.smarthost.check("ss -Hltn 'sport = :25'").splitlines()
    return " ".join(sorted(line.split()[3] for line in lines if line.strip()))


@pytest.fixture(scope="module")
def node_listening(bed: Testbed) -> NodeListening:
    """inet_interfaces changes with the package (loopback-only) and without it (Debian's all): a restart each time."""
    node = bed.smarthost
    deb = node.check(f"ls /root/{SMARTHOST}_*_all.deb").split()[-1]
    installed = (master_pid(node), port_25_sockets(bed))
    node.check(f"apt-get remove -y -q {SMARTHOST}", timeout=APT_TIMEOUT)
    removed = (master_pid(node), port_25_sockets(bed))
    node.check(f"dpkg -i {deb}", timeout=APT_TIMEOUT)
    return NodeListening(installed, removed, (master_pid(node), port_25_sockets(bed)))


def test_inet_interfaces_changed_restarts_postfix_on_the_node(node_listening: NodeListening) -> None:
    loopback = {"127.0.0.1:25", "[::1]:25"}
    (pid, sockets), (removed_pid, removed_sockets) = node_listening.installed, node_listening.removed
    assert set(sockets.split()) <= loopback, f"the node listens beyond loopback: {sockets}"
    assert removed_pid != pid, "master(8) was not restarted when the package's inet_interfaces went away"
    assert not set(removed_sockets.split()) <= loopback, f"still loopback only once removed: {removed_sockets}"
    reinstalled_pid, reinstalled_sockets = node_listening.reinstalled
    assert reinstalled_pid != removed_pid, "master(8) was not restarted for the package's inet_interfaces"
    assert set(reinstalled_sockets.split()) <= loopback, f"not loopback only once installed: {reinstalled_sockets}"
