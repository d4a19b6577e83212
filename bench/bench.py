"""Benchmarks: prints figures, asserts nothing.  `make bench`.

- how long loading + validating the site and rendering it take;
- how big the built packages are (dist/*.deb, as built by `make deb`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from debian.debfile import DebFile

from oignons_mail.render import render
from oignons_mail.site import load_site

ROOT = Path(__file__).resolve().parents[1]
RUNS = 200


def timed(function: object, runs: int) -> list[float]:
    assert callable(function)
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return durations


def report(name: str, durations: list[float]) -> None:
    median = statistics.median(durations) * 1000
    worst = max(durations) * 1000
    print(f"{name:<28} median {median:8.3f} ms   max {worst:8.3f} ms   ({len(durations)} runs)")


def main() -> int:
    site_file = ROOT / "sites" / "nos-oignons.toml"
    site = load_site(site_file)
    report("load + validate site", timed(lambda: load_site(site_file), RUNS))
    report("render (both roles)", timed(lambda: render(site), RUNS))
    files = render(site)
    print(f"{'rendered files':<28} {len(files)} files, {sum(len(t.encode()) for t in files.values())} bytes")
    debs = sorted((ROOT / "dist").glob("*.deb"))
    if not debs:
        print("no dist/*.deb: run `make deb` for package sizes")
    for deb in debs:
        control = DebFile(str(deb)).debcontrol()
        print(f"{deb.name:<44} {deb.stat().st_size:>7} bytes, Installed-Size {control['Installed-Size']} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
