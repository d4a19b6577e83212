"""Fleet-health figures (nothing asserted): `oignons-mail fleet` over 1,000 recorded hosts, and the
size of a heartbeat as the sender gives it to Postfix (`make bench`, its "fleet" group; `status`
on a booted node and relay is measured with the throughput group's systems)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import tempfile
import time
from pathlib import Path

from bench.measure import Figure, seconds_of
from oignons_mail import health
from oignons_mail.cli import main as tool

HOSTS = 1000
HEARTBEAT = health.Heartbeat(
    host="marcuse", version="0.2.0", postfix="3.7.11", active=0, deferred=12, hold=0,
    oldest_deferred_seconds=86399, queue_free_bytes=21474836480,
    deferral_reason="Server certificate not verified", time="2026-12-01T03:12:44Z",
)  # fmt: skip
# The sender's own header lines (scripts/heartbeat); Postfix adds its own on the way.
HEADER = (
    f"To: heartbeat@nos-oignons.net\nSubject: {health.HEARTBEAT_SUBJECT} marcuse\nAuto-Submitted: auto-generated\n\n"
)


def fleet_figures(runs: int) -> list[Figure]:
    """`fleet` (table and --json) over HOSTS recorded hosts, in process; a heartbeat's size as sent."""
    size = Figure("heartbeat_bytes", "bytes", note="a heartbeat as the sender gives it to Postfix (headers included)")
    size.values = [float(len((HEADER + health.compose_body(HEARTBEAT)).encode()))]
    listings = [
        Figure(f"fleet_ms_{HOSTS}_hosts", "ms", note=f"oignons-mail fleet over {HOSTS} recorded hosts"),
        Figure(f"fleet_json_ms_{HOSTS}_hosts", "ms", note=f"oignons-mail fleet --json over {HOSTS} recorded hosts"),
    ]
    with tempfile.TemporaryDirectory() as work:
        state = Path(work) / "state"
        store = health.StateStore(state)
        now = time.time()
        for index in range(HOSTS):
            heartbeat = dataclasses.replace(HEARTBEAT, host=f"node{index}", time=health.format_time(now - 60))
            store.store(health.Received(heartbeat, heartbeat.host, "local"), now)
        config = Path(work) / "fleet.json"
        config.write_text('{"late_after_seconds": 129600, "queue_after_seconds": 14400, "nodes": []}\n')
        for figure, extra in zip(listings, ([], ["--json"]), strict=True):
            argv = ["fleet", "--state", str(state), "--config", str(config), *extra]
            for _ in range(runs):
                with contextlib.redirect_stdout(io.StringIO()):
                    figure.values.append(seconds_of(functools.partial(tool, argv)) * 1000)
    return [size, *listings]
