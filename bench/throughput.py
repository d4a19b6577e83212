"""Relay throughput beside stock Postfix, in booted systems on the e2e test network.

Two systems boot with systemd-nspawn in the e2e harness's network
namespaces (tests/e2e/machines.py): the relay (oignons-mail-relay as
shipped, rspamd running, the test network's DNS in its unbound) and a
stock system (Debian's postfix from the same release, Internet Site, as
mmdebstrap installed it).  Postfix's own smtp-sink listens in the "world"
namespace as the MX of elsewhere.test; Postfix's smtp-source, run inside
each system, submits MESSAGES messages of 4 KiB over 10 sessions on
127.0.0.1 (so that both may relay without a client certificate).  A figure
is MESSAGES divided by the seconds from smtp-source's start to the queue
being empty again (every message delivered onward or bounced; the run fails
unless the log shows them all sent).

The node -> relay figures over pinned TLS need the e2e test keys (a relay
certificate the node pins): they are reported as not measured.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e import machines
from tests.e2e.machines import (
    RELAY_ADDRESS,
    RELAY_WORLD_ADDRESS,
    SINK_ADDRESS,
    SMARTHOST_ADDRESS,
    Container,
    anvil_exemption,
    reload_postfix,
)
from tests.e2e.testbed import (
    MAIN_POSTFIX_UNIT,
    RELAY_HOSTNAME,
    RELAY_PACKAGES,
    SMARTHOST_HOSTNAME,
    SMARTHOST_PACKAGES,
    TOOL_PACKAGES,
    UNBOUND_TEST_CONF,
    Artifacts,
    build_artifacts,
    install_file,
    install_key_pair,
    install_tool,
    prepare_smarthost,
    set_network_files,
    unbound_zone,
)
from tests.system.debian_system import COMMAND_ENVIRONMENT, DebianSystem, base_tarball

from bench.install import RELEASE, prepare_relay_system
from bench.measure import Figure, seconds_of

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "bench" / "throughput"
MESSAGES = int(os.environ.get("OIGNONS_MAIL_BENCH_MESSAGES", "500"))
SESSIONS = 10
MESSAGE_BYTES = 4096
STOCK_HOSTNAME = "stock.nos-oignons.net"
RECIPIENT = "sink@elsewhere.test"
SENDER = "bench@nos-oignons.net"
LOAD_TIMEOUT = 600
# Names of this bench's containers and network namespaces.
RUN_PREFIX = "obench"
Cleanup = tuple[str, Callable[[], list[str]]]
RSPAMD_TIMEOUT = 240.0


WAIT_FOR_EMPTY_QUEUE = f"""deadline=$(( $(date +%s) + {LOAD_TIMEOUT} ))
while ! postqueue -p | grep -q '^Mail queue is empty'; do
    [ "$(date +%s)" -lt "$deadline" ] || {{ echo "queue not empty after {LOAD_TIMEOUT}s" >&2; exit 3; }}
    sleep 0.1
done
"""
# What the run's smtp client logged: messages sent, TLS sessions, resumed ones.
COUNT_LOG = """sleep 1
log=$(journalctl -q -o cat --since "$since" -t postfix/smtp)
sent=$(printf '%s\\n' "$log" | grep -c 'status=sent' || true)
tls=$(printf '%s\\n' "$log" | grep -c 'TLS connection established to' || true)
reused=$(printf '%s\\n' "$log" | grep -c 'Reusing old session' || true)
echo "bench-load $start $end $sent $tls $reused"
"""
LOAD_LINE = re.compile(r"^bench-load (\S+) (\S+) (\d+) (\d+) (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Load:
    messages: int
    seconds: float
    tls_sessions: int
    reused_sessions: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def smtp_source_script(messages: int) -> str:
    """smtp-source into 127.0.0.1:25 (local clients may relay on both), then wait for an empty queue."""
    return f"""set -e
since=$(date '+%Y-%m-%d %H:%M:%S')
start=$(date +%s.%N)
smtp-source -s {SESSIONS} -m {messages} -l {MESSAGE_BYTES} -f {SENDER} -t {RECIPIENT} 127.0.0.1:25
{WAIT_FOR_EMPTY_QUEUE}end=$(date +%s.%N)
{COUNT_LOG}"""


def sendmail_script(messages: int) -> str:
    """A node's sendmail, MESSAGES times in a row (cron's way), then wait for the queue to reach the relay."""
    return f"""set -e
{{ printf 'From: root@{SMARTHOST_HOSTNAME}\\nTo: {RECIPIENT}\\nSubject: bench\\n\\n'
  yes 'oignons-mail bench: a line of a 4 KiB message' | head -c {MESSAGE_BYTES}; }} > /root/bench-message
since=$(date '+%Y-%m-%d %H:%M:%S')
start=$(date +%s.%N)
i=0
while [ $i -lt {messages} ]; do
    sendmail -f root@{SMARTHOST_HOSTNAME} {RECIPIENT} < /root/bench-message
    i=$((i + 1))
done
{WAIT_FOR_EMPTY_QUEUE}end=$(date +%s.%N)
{COUNT_LOG}"""


def load(container: Container, script: str, messages: int) -> Load:
    result = container.run(script, timeout=LOAD_TIMEOUT + 300)
    result.check(f"the load on {container.machine}")
    found = LOAD_LINE.search(result.stdout)
    if found is None:
        raise RuntimeError(f"no timing line from {container.machine}:\n{result.stdout[-2000:]}")
    start, end, sent, tls, reused = (float(value) for value in found.groups())
    if sent < messages:
        raise RuntimeError(f"{container.machine}: {sent:.0f} of {messages} messages logged as sent")
    return Load(messages, end - start, int(tls), int(reused))


def rate(container: Container, messages: int) -> float:
    return load(container, smtp_source_script(messages), messages).rate


def prepare_stock(system: DebianSystem) -> None:
    """Debian's postfix as installed, with this host's name (the installer's one question)."""
    set_network_files(system, STOCK_HOSTNAME, SMARTHOST_ADDRESS, RELAY_ADDRESS)
    system.run(f"set -e; postconf -e myhostname={STOCK_HOSTNAME} 'mydestination=$myhostname, localhost'").check(
        "postconf on the stock system"
    )


# What most setups run beside Postfix: Debian's rspamd as installed, its proxy
# worker's milter on TCP (localhost:11332), Postfix told to use it.
STOCK_MILTER_PACKAGES = ("rspamd",)
STOCK_MILTER = "inet:127.0.0.1:11332"


def use_stock_milter(stock: Container) -> None:
    """The stock system's Postfix with rspamd's milter over TCP, once rspamd's proxy worker listens."""
    machines.wait_until(
        "rspamd's proxy worker on the stock system",
        lambda: True if stock.run("ss -Hltn 'sport = :11332' | grep -q .").returncode == 0 else None,
        RSPAMD_TIMEOUT,
    )
    reload_postfix(stock, f"postconf -e smtpd_milters={STOCK_MILTER} milter_default_action=accept")


def route_through_relay(network: machines.TestNetwork) -> None:
    """The stock system (in the node's namespace) reaches the sink through the relay's namespace."""
    machines.run(["ip", "netns", "exec", network.relay, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).check(
        "ip_forward in the relay's namespace"
    )
    network.ip(network.smarthost, "route", "add", "default", "via", RELAY_ADDRESS)
    network.ip(network.world, "route", "add", "10.237.0.0/24", "via", RELAY_WORLD_ADDRESS)


def start_smtp_sink(network: machines.TestNetwork, root: Path, log: Path) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink (the stock system's binary, chrooted) on the sink's address."""
    with log.open("wb") as output:
        return subprocess.Popen(
            ["ip", "netns", "exec", network.world, "chroot", str(root), "/usr/sbin/smtp-sink",
             "-u", "postfix", f"{SINK_ADDRESS}:25", "256"],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=COMMAND_ENVIRONMENT,
            start_new_session=True,
        )  # fmt: skip


def wait_relay_ready(relay: Container, milter_socket: str) -> None:
    units = f"{MAIN_POSTFIX_UNIT[RELEASE]} rspamd.service unbound.service"
    machines.wait_until(units, lambda: True if relay.run(f"systemctl is-active {units}").returncode == 0 else None, 120)
    machines.wait_until(
        f"rspamd's milter socket {milter_socket}",
        lambda: True if relay.run(f"test -S {milter_socket}").returncode == 0 else None,
        RSPAMD_TIMEOUT,
    )


def boot_all(containers: list[Container]) -> None:
    """Boot the systems; a unit the bench does not use may fail (mailman3 does at times under load)."""
    for container in containers:
        container.boot()
    for container in containers:
        if container.wait_booted() != "running":
            failed = container.run("systemctl --failed --no-legend --no-pager").stdout
            print(f"bench: {container.machine} booted degraded: failed units:\n{failed}", flush=True)


@dataclass
class Rates:
    stock: Figure = field(default_factory=lambda: Figure("stock_msgs_per_s", "msg/s"))
    relay: Figure = field(default_factory=lambda: Figure("relay_msgs_per_s", "msg/s"))
    bare: Figure = field(default_factory=lambda: Figure("relay_no_milter_msgs_per_s", "msg/s"))
    node: Figure = field(default_factory=lambda: Figure("node_to_relay_msgs_per_s", "msg/s"))
    reuse: Figure = field(default_factory=lambda: Figure("tls_session_reuse_ratio", "ratio", "> 0"))
    stock_milter: Figure = field(default_factory=lambda: Figure("stock_rspamd_tcp_msgs_per_s", "msg/s"))
    status_node: Figure = field(default_factory=lambda: Figure("status_seconds_node", "s", "< 2"))
    status_relay: Figure = field(default_factory=lambda: Figure("status_seconds_relay", "s"))


def prepare_systems(artifacts: Artifacts, cleanup: list[Cleanup]) -> tuple[DebianSystem, DebianSystem, DebianSystem]:
    """The relay, stock and node directories, ready to boot."""
    relay_settings = artifacts.site.relay
    relay_system = prepare_relay_system(
        base_tarball(RELEASE, (*RELAY_PACKAGES, *TOOL_PACKAGES)),
        artifacts.relay_deb,
        lambda system: install_key_pair(
            system, artifacts.relay_key, relay_settings.tls_cert_file, relay_settings.tls_key_file
        ),
    )
    cleanup.append(("remove the relay's directory", lambda: _remove(relay_system)))
    set_network_files(relay_system, RELAY_HOSTNAME, RELAY_ADDRESS, "127.0.0.1")
    install_file(relay_system, unbound_zone([]), UNBOUND_TEST_CONF, 0o644)
    # rspamd beside the stock Postfix: its milter over TCP for the second stock figure.
    stock_system = DebianSystem(base_tarball(RELEASE, (*SMARTHOST_PACKAGES, *STOCK_MILTER_PACKAGES)), RELEASE)
    cleanup.append(("remove the stock system's directory", lambda: _remove(stock_system)))
    prepare_stock(stock_system)
    node_system = DebianSystem(base_tarball(RELEASE, (*SMARTHOST_PACKAGES, *TOOL_PACKAGES)), RELEASE)
    cleanup.append(("remove the node's directory", lambda: _remove(node_system)))
    prepare_smarthost(node_system, artifacts)
    # `oignons-mail status` on both (the tool's package, as the packages' Recommends bring it).
    for system in (relay_system, node_system):
        install_tool(system, artifacts)
    for system in (relay_system, stock_system, node_system):
        (system.root / "usr/sbin/policy-rc.d").unlink()
    return relay_system, stock_system, node_system


def measure(relay: Container, stock: Container, node: Container, runs: int, rates: Rates) -> None:
    # Warm-up: caches, DNS, rspamd's first scans; not counted.
    rate(stock, SESSIONS)
    rate(relay, SESSIONS)
    for _ in range(runs):  # in turn, so that both see the same drift of the machine
        rates.stock.values.append(rate(stock, MESSAGES))
        rates.relay.values.append(rate(relay, MESSAGES))
    use_stock_milter(stock)
    rate(stock, SESSIONS)  # rspamd's first scans
    for _ in range(runs):
        rates.stock_milter.values.append(rate(stock, MESSAGES))
    problems = machines.stop_all([stock])
    if problems:
        raise RuntimeError(f"powering the stock system off: {problems}")
    boot_all([node])
    for container, figure in ((node, rates.status_node), (relay, rates.status_relay)):
        for _ in range(runs):
            figure.values.append(seconds_of(functools.partial(container.run, "oignons-mail status", 60)))
    # The relay's per-client limits (client_limits: 100 connections a minute)
    # defer a node sending faster, one connection a message (seen: 421 "too
    # many connections" for 160 of 250 messages): the node is exempted here.
    with anvil_exemption(relay, SMARTHOST_ADDRESS):
        node_messages = MESSAGES // 5
        load(node, sendmail_script(SESSIONS), SESSIONS)
        for _ in range(runs):
            rates.node.values.append(load(node, sendmail_script(node_messages), node_messages).rate)
        # Postfix logs a resumed session only from smtp_tls_loglevel 2 on: raised for these runs alone.
        reload_postfix(node, "postconf -e smtp_tls_loglevel=2")
        for _ in range(runs):
            run = load(node, sendmail_script(node_messages), node_messages)
            if run.tls_sessions == 0:
                raise RuntimeError("the node logged no TLS session to the relay")
            rates.reuse.values.append(run.reused_sessions / run.tls_sessions)
    relay.check("systemctl stop rspamd.service")
    rate(relay, SESSIONS)
    for _ in range(runs):
        rates.bare.values.append(rate(relay, MESSAGES))


def throughput_figures(runs: int) -> list[Figure]:
    WORK.mkdir(parents=True, exist_ok=True)
    # The test keys, a site pinning them, and the packages built from it (tests/e2e/testbed.py).
    artifacts = build_artifacts(WORK / "e2e")
    pid = os.getpid()
    # Not the e2e tests' "oe2e" prefix: their sweep takes a run without pytest in its
    # command line for a dead one and would power these systems off.
    network = machines.TestNetwork(*(f"{RUN_PREFIX}{pid}-{role}" for role in ("bulbe", "marcuse", "world")))
    cleanup: list[Cleanup] = []
    rates = Rates()
    try:
        relay_system, stock_system, node_system = prepare_systems(artifacts, cleanup)
        cleanup.append(("delete the network namespaces", network.destroy))
        network.create()
        route_through_relay(network)
        relay = Container(relay_system, f"{RUN_PREFIX}-bulbe-{pid}", RELAY_HOSTNAME, network.relay,
                          WORK / "relay-console.log")  # fmt: skip
        stock = Container(stock_system, f"{RUN_PREFIX}-marcuse-{pid}", STOCK_HOSTNAME, network.smarthost,
                          WORK / "stock-console.log")  # fmt: skip
        # The node takes the stock system's place in the node's namespace, after it.
        node = Container(node_system, f"{RUN_PREFIX}-node-{pid}", SMARTHOST_HOSTNAME, network.smarthost,
                         WORK / "node-console.log")  # fmt: skip
        cleanup.append(("power the systems off", lambda: machines.stop_all([relay, stock, node])))
        boot_all([relay, stock])
        sink = start_smtp_sink(network, stock_system.root, WORK / "smtp-sink.log")
        cleanup.append(("stop smtp-sink", lambda: machines.stop_process(sink)))
        wait_relay_ready(relay, artifacts.site.relay.rspamd_milter_socket)
        measure(relay, stock, node, runs, rates)
    finally:
        machines.undo(cleanup, "the throughput bench")
    stock_rate, relay_rate, bare_rate, node_rate, reuse = rates.stock, rates.relay, rates.bare, rates.node, rates.reuse
    what = f"{MESSAGES} messages of {MESSAGE_BYTES} bytes over {SESSIONS} sessions, {RELEASE}"
    stock_rate.note = f"stock postfix, Internet Site: {what}"
    relay_rate.note = (
        "oignons-mail-relay as shipped, rspamd milter on (the client, 127.0.0.1, is a local address to rspamd)"
    )
    bare_rate.note = "the same relay with rspamd stopped (milter_default_action = accept)"
    node_rate.note = (
        f"{MESSAGES // 5} messages, one sendmail each, node -> relay over pinned TLS -> sink;"
        " until the node's queue is empty; the relay's per-client limits exempted for the node"
        " (as shipped: 100 connections a minute a node)"
    )
    reuse.note = (
        'resumed / established TLS sessions in the node\'s log ("Reusing old session" needs smtp_tls_loglevel 2:'
        " set for these runs only)"
    )
    ratio = Figure("relay_to_stock_ratio", "ratio", ">= 0.9")
    ratio.values = [bare / stock for bare, stock in zip(bare_rate.values, stock_rate.values, strict=True)]
    ratio.note = "relay_no_milter / stock, run by run (the median of the ratios)"
    rates.stock_milter.note = (
        f"stock postfix with Debian's rspamd as installed, its milter over TCP ({STOCK_MILTER}): {what}"
    )
    milter_ratio = Figure("relay_to_stock_rspamd_tcp_ratio", "ratio")
    milter_ratio.values = [
        relay / stock for relay, stock in zip(relay_rate.values, rates.stock_milter.values, strict=True)
    ]
    milter_ratio.note = (
        "relay (rspamd milter on its unix socket, DKIM signing, the site's rules) / stock_rspamd_tcp, run by run"
    )
    rates.status_node.note = "oignons-mail status on the booted node (through nsenter), queue empty"
    rates.status_relay.note = (
        "oignons-mail status on the booted relay, its DNS check included (the test zone: unsigned, so warnings)"
    )
    return [stock_rate, relay_rate, bare_rate, ratio, rates.stock_milter, milter_ratio, node_rate, reuse,
            rates.status_node, rates.status_relay]  # fmt: skip


def _remove(system: DebianSystem) -> list[str]:
    system.remove()
    return []
