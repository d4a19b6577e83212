"""What the packages cost, side by side with stock Postfix: `make bench` (root).

Prints one table of figures (each the median of RUNS runs, with min and
max), writes them to build/bench/results.json (one object, numbers only;
a figure that was not measured is left out of it and shown as "not
measured" in the table) and keeps the table in docs/benchmarks.md with the
machine, the date and the commit.  It asserts nothing: the targets are
printed beside the figures, for a reader to judge.

    python3 bench/figures.py [--runs N] [--only build,render,validate,install,apply,throughput,footprint,fleet,live]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ itself comes first on the path, where bench.py would
# hide the bench package: the checkout and its src/ instead.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]
for entry in (str(ROOT), str(ROOT / "src")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.fleet_health import fleet_figures  # noqa: E402
from bench.footprint import footprint_figures  # noqa: E402
from bench.install import apply_figures, install_figures  # noqa: E402
from bench.live import live_figures  # noqa: E402
from bench.measure import Figure  # noqa: E402
from bench.packaging import build_figures, render_figures  # noqa: E402
from bench.throughput import throughput_figures  # noqa: E402
from bench.validation import validate_figures  # noqa: E402

RESULTS = ROOT / "build" / "bench" / "results.json"
DOCUMENT = ROOT / "docs" / "benchmarks.md"
RUNS = 5
GROUPS: dict[str, Callable[[int], list[Figure]]] = {
    "build": build_figures,
    "render": render_figures,
    "validate": validate_figures,
    "install": install_figures,
    "apply": apply_figures,
    "throughput": throughput_figures,
    "footprint": footprint_figures,
    "fleet": fleet_figures,
    "live": live_figures,
}


def table(figures: Sequence[Figure]) -> str:
    rows: list[tuple[str, ...]] = [("figure", "median", "min", "max", "unit", "runs", "target"), ("---",) * 7]
    for figure in figures:
        if figure.values:
            rows.append((figure.key, *(_number(v) for v in (figure.median, figure.minimum, figure.maximum)),
                         figure.unit, str(len(figure.values)), figure.target))  # fmt: skip
        else:
            rows.append((figure.key, "not measured", "", "", figure.unit, "0", figure.target))
    widths = [max(len(row[column]) for row in rows) for column in range(7)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
             for row in rows]  # fmt: skip
    lines[1] = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    notes = [f"- {figure.key}: {figure.note}" for figure in figures if figure.note]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    release = Path("/etc/debian_version").read_text().strip()
    return f"{os.cpu_count()} CPUs ({cpu}), Debian {release}, kernel {platform.release()}, load average {load}"


def commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    return result.stdout.strip() or "unknown"


def write_document(text: str, started: str, measured_commit: str, machine_before: str, machine_after: str) -> None:
    DOCUMENT.parent.mkdir(parents=True, exist_ok=True)
    DOCUMENT.write_text(
        "# Benchmarks\n\n"
        "The last table printed by `make bench` (as root: it builds the packages, installs\n"
        "them into fresh chroots made from the cached base systems, and boots test\n"
        "systems like the end-to-end tests).  Each figure is the median of its runs,\n"
        "with the smallest and largest; the targets are those of the project's\n"
        "benchmark issue.  The machine is shared: compare medians and ratios, and read\n"
        "a wide min-max spread as noise from other work on it.\n\n"
        f"- date: {started}\n- commit: {measured_commit}\n- machine at the start: {machine_before}\n"
        f"- machine at the end: {machine_after}\n\n" + text,
        encoding="utf-8",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per figure (default {RUNS})")
    parser.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups to measure")
    options = parser.parse_args(argv)
    groups = [group for group in options.only.split(",") if group]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown groups {unknown}; choose among {', '.join(GROUPS)}")
    if os.geteuid() != 0:
        print("make bench builds packages and installs them into chroots: run it as root", file=sys.stderr)
        return 2
    # SIGTERM as Ctrl-C: the harness's cleanup (containers, namespaces) runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine_before = machine()
    # Now: the document written after each group makes the tree dirty.
    measured_commit = commit()
    figures: list[Figure] = []
    for group in groups:
        print(f"bench: measuring {group} ...", flush=True)
        try:
            figures.extend(GROUPS[group](options.runs))
        except Exception as error:  # the other groups' figures still count
            print(f"bench: {group} failed: {error}", file=sys.stderr, flush=True)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            figures.append(Figure(f"{group} (group)", "", "", [], f"not measured: {group} failed: {reason}"))
        # Written after each group: a run stopped half-way keeps what it measured.
        text = table(figures)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        measured = {figure.key: figure.median for figure in figures if figure.values}
        RESULTS.write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
        write_document(text, started, measured_commit, machine_before, machine())
    print(table(figures))
    print(f"bench: wrote {RESULTS.relative_to(ROOT)} and {DOCUMENT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
