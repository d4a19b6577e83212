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

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.e2e import machines
from tests.e2e.machines import RELAY_ADDRESS, RELAY_WORLD_ADDRESS, SINK_ADDRESS, SMARTHOST_ADDRESS, Container
from tests.e2e.testbed import (
    MAIN_POSTFIX_UNIT,
    RELAY_HOSTNAME,
    RELAY_PACKAGES,
    SMARTHOST_PACKAGES,
    UNBOUND_TEST_CONF,
    install_file,
    set_network_files,
    unbound_zone,
)
from tests.system.debian_system import COMMAND_ENVIRONMENT, DebianSystem, base_tarball

from bench.install import RELEASE, package, prepare_relay_system
from bench.measure import Figure, not_measured
from oignons_mail.site import load_site

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "bench" / "throughput"
MESSAGES = int(os.environ.get("OIGNONS_MAIL_BENCH_MESSAGES", "500"))
SESSIONS = 10
MESSAGE_BYTES = 4096
STOCK_HOSTNAME = "stock.nos-oignons.net"
RECIPIENT = "sink@elsewhere.test"
SENDER = "bench@nos-oignons.net"
LOAD_TIMEOUT = 600
RSPAMD_TIMEOUT = 240.0
# A run prints: bench-load START END SENT
LOAD_LINE = re.compile(r"^bench-load (\S+) (\S+) (\d+)$", re.MULTILINE)


def load_script(messages: int) -> str:
    """smtp-source into 127.0.0.1:25, then wait for an empty queue; print the times and the sent count."""
    return f"""set -e
since=$(date '+%Y-%m-%d %H:%M:%S')
start=$(date +%s.%N)
smtp-source -s {SESSIONS} -m {messages} -l {MESSAGE_BYTES} -f {SENDER} -t {RECIPIENT} 127.0.0.1:25
deadline=$(( $(date +%s) + {LOAD_TIMEOUT} ))
while ! postqueue -p | grep -q '^Mail queue is empty'; do
    [ "$(date +%s)" -lt "$deadline" ] || {{ echo "queue not empty after {LOAD_TIMEOUT}s" >&2; exit 3; }}
    sleep 0.1
done
end=$(date +%s.%N)
sleep 1
sent=$(journalctl -q -o cat --since "$since" -t postfix/smtp | grep -c 'status=sent' || true)
echo "bench-load $start $end $sent"
"""


def rate(container: Container, messages: int) -> float:
    result = container.run(load_script(messages), timeout=LOAD_TIMEOUT + 120).check(
        f"smtp-source on {container.machine}"
    )
    found = LOAD_LINE.search(result.stdout)
    if found is None:
        raise RuntimeError(f"no timing line from {container.machine}:\n{result.stdout[-2000:]}")
    start, end, sent = float(found.group(1)), float(found.group(2)), int(found.group(3))
    if sent < messages:
        raise RuntimeError(f"{container.machine}: {sent} of {messages} messages logged as sent")
    return messages / (end - start)


def prepare_stock(system: DebianSystem) -> None:
    """Debian's postfix as installed, with this host's name (the installer's one question)."""
    set_network_files(system, STOCK_HOSTNAME, SMARTHOST_ADDRESS, RELAY_ADDRESS)
    system.run(f"set -e; postconf -e myhostname={STOCK_HOSTNAME} 'mydestination=$myhostname, localhost'").check(
        "postconf on the stock system"
    )


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


def throughput_figures(runs: int) -> list[Figure]:
    milter_socket = load_site(ROOT / "sites" / "nos-oignons.toml").relay.rspamd_milter_socket
    WORK.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    network = machines.TestNetwork.for_run(pid)
    cleanup: list[tuple[str, Callable[[], list[str]]]] = []
    stock_rate = Figure("stock_msgs_per_s", "msg/s", "")
    relay_rate = Figure("relay_msgs_per_s", "msg/s", "")
    bare_rate = Figure("relay_no_milter_msgs_per_s", "msg/s", "")
    try:
        relay_system = prepare_relay_system(base_tarball(RELEASE, RELAY_PACKAGES), package("oignons-mail-relay"))
        cleanup.append(("remove the relay's directory", lambda: _remove(relay_system)))
        set_network_files(relay_system, RELAY_HOSTNAME, RELAY_ADDRESS, "127.0.0.1")
        install_file(relay_system, unbound_zone([]), UNBOUND_TEST_CONF, 0o644)
        stock_system = DebianSystem(base_tarball(RELEASE, SMARTHOST_PACKAGES), RELEASE)
        cleanup.append(("remove the stock system's directory", lambda: _remove(stock_system)))
        prepare_stock(stock_system)
        for system in (relay_system, stock_system):
            (system.root / "usr/sbin/policy-rc.d").unlink()
        cleanup.append(("delete the network namespaces", network.destroy))
        network.create()
        route_through_relay(network)
        relay = Container(relay_system, machines.machine_name("bulbe", pid), RELAY_HOSTNAME, network.relay,
                          WORK / "relay-console.log")  # fmt: skip
        stock = Container(stock_system, machines.machine_name("marcuse", pid), STOCK_HOSTNAME, network.smarthost,
                          WORK / "stock-console.log")  # fmt: skip
        cleanup.append(("power the systems off", lambda: machines.stop_all([relay, stock])))
        machines.boot_all([relay, stock])
        sink = start_smtp_sink(network, stock_system.root, WORK / "smtp-sink.log")
        cleanup.append(("stop smtp-sink", lambda: machines.stop_process(sink)))
        wait_relay_ready(relay, milter_socket)
        # Warm-up: caches, DNS, rspamd's first scans; not counted.
        rate(stock, SESSIONS)
        rate(relay, SESSIONS)
        for _ in range(runs):  # in turn, so that both see the same drift of the machine
            stock_rate.values.append(rate(stock, MESSAGES))
            relay_rate.values.append(rate(relay, MESSAGES))
        relay.check("systemctl stop rspamd.service")
        rate(relay, SESSIONS)
        for _ in range(runs):
            bare_rate.values.append(rate(relay, MESSAGES))
    finally:
        machines.undo(cleanup, "the throughput bench")
    what = f"{MESSAGES} messages of {MESSAGE_BYTES} bytes over {SESSIONS} sessions, {RELEASE}"
    stock_rate.note = f"stock postfix, Internet Site: {what}"
    relay_rate.note = (
        "oignons-mail-relay as shipped, rspamd milter on (smtp-source on 127.0.0.1: rspamd's local address)"
    )
    bare_rate.note = "the same relay with rspamd stopped (milter_default_action = accept)"
    ratio = Figure("relay_to_stock_ratio", "ratio", ">= 0.9")
    ratio.values = [bare / stock for bare, stock in zip(bare_rate.values, stock_rate.values, strict=True)]
    ratio.note = "relay_no_milter / stock, run by run (the median of the ratios)"
    why = "needs the e2e test keys (a relay certificate the node pins); not written yet"
    return [
        stock_rate,
        relay_rate,
        bare_rate,
        ratio,
        not_measured("node_to_relay_msgs_per_s", "msg/s", "", why),
        not_measured("tls_session_reuse_ratio", "ratio", "> 0", why),
    ]


def _remove(system: DebianSystem) -> list[str]:
    system.remove()
    return []
