"""Fleet-health figures (printed, nothing asserted): `oignons-mail fleet` over 1,000 recorded hosts,
and the size of a heartbeat as the sender gives it to Postfix.  `make bench`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from oignons_mail import health
from oignons_mail.cli import main as tool

HOSTS = 1000
RUNS = 20
HEARTBEAT = health.Heartbeat(
    host="marcuse", version="0.2.0", postfix="3.7.11", active=0, deferred=12, hold=0,
    oldest_deferred_seconds=86399, queue_free_bytes=21474836480,
    deferral_reason="Server certificate not verified", time="2026-12-01T03:12:44Z",
)  # fmt: skip
# The sender's own header lines (scripts/heartbeat); Postfix adds its own on the way.
HEADER = (
    f"To: heartbeat@nos-oignons.net\nSubject: {health.HEARTBEAT_SUBJECT} marcuse\nAuto-Submitted: auto-generated\n\n"
)


def main() -> int:
    print(f"{'heartbeat as sent':<28} {len((HEADER + health.compose_body(HEARTBEAT)).encode())} bytes")
    with tempfile.TemporaryDirectory() as work:
        state = Path(work) / "state"
        store = health.StateStore(state)
        now = time.time()
        for index in range(HOSTS):
            heartbeat = dataclasses.replace(HEARTBEAT, host=f"node{index}", time=health.format_time(now - 60))
            store.store(health.Received(heartbeat, heartbeat.host, "local"), now)
        config = Path(work) / "fleet.json"
        config.write_text('{"late_after_seconds": 129600, "queue_after_seconds": 14400, "nodes": []}\n')
        for label, extra in (("fleet, 1000 hosts", []), ("fleet --json, 1000 hosts", ["--json"])):
            durations = []
            for _ in range(RUNS):
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    tool(["fleet", "--state", str(state), "--config", str(config), *extra])
                durations.append(time.perf_counter() - start)
            median = statistics.median(durations) * 1000
            print(f"{label:<28} median {median:8.1f} ms   max {max(durations) * 1000:8.1f} ms   ({RUNS} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
