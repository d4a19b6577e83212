"""Port 25 during the relay package's install, upgrade and removal on a running relay (`make bench`).

The live-upgrade cycle of tests/e2e/test_live_upgrade.py, on a booted relay
of each release, with its SMTP client submitting all along: N -> N+1 (a
settings-only upgrade), removal, installation again.  A figure is the
longest time between two accepted messages around a step: what a client
sending then saw of the relay.  The client starts a session every 0.2 s,
so 0.2 s to 1 s is mail flowing; more is mail turned away.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.e2e.test_live_upgrade import LIVE_STEPS, live_cycle, longest_outage
from tests.e2e.testbed import build_artifacts, testbed

from bench.measure import Figure

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "bench" / "live"
RELEASES = ("bookworm", "trixie")
STEP_NAMES = {"upgrade": "upgrade (settings only)", "remove": "apt-get remove", "reinstall": "apt-get install again"}


def live_figures(runs: int) -> list[Figure]:
    """One cycle per release (a cycle is minutes: `runs` does not apply)."""
    del runs
    artifacts = build_artifacts(WORK / "e2e")
    figures = []
    for release in RELEASES:
        with testbed(artifacts, release, release) as bed:
            work = WORK / f"cycle-{release}"
            shutil.rmtree(work, ignore_errors=True)  # a run's N+1 tree and client log: dpkg-deb -R wants none
            work.mkdir(parents=True)
            cycle = live_cycle(bed, work)
        for step in LIVE_STEPS:
            figure = Figure(f"port25_longest_gap_s_{step}_{release}", "s")
            figure.values = [longest_outage(cycle, step)]
            figure.note = (
                f"{STEP_NAMES[step]} on a running {release} relay: the longest time between two accepted"
                " messages of a client submitting every 0.2 s"
            )
            figures.append(figure)
    return figures
