"""Figures of the build tool: `make deb` from a warm tree, and rendering at scale."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from bench.measure import Figure, seconds_of
from oignons_mail.render import render
from oignons_mail.site import load_site

ROOT = Path(__file__).resolve().parents[1]
SITE_SOURCE = ROOT / "sites" / "nos-oignons.toml"
LOG = ROOT / "build" / "bench" / "make-deb.log"
BUILD_TIMEOUT = 600
# Nodes of the generated sites; with them 1 transport per 5 nodes and 1
# Schleuder list per 10 (1000 nodes: 200 transports, 100 lists).
SCALES = (10, 100, 1000)
RENDER_RUNS = 7  # cheap: a few more than the minimum


def build_figures(runs: int) -> list[Figure]:
    """`make deb` as a user runs it (the packaging alone: nocheck), and the build with its unit tests.

    One untimed warm-up build first; then the two in turn, so that both see
    the same drift of a shared machine.
    """
    LOG.parent.mkdir(parents=True, exist_ok=True)
    build = Figure("build_seconds", "s", "<= 10")
    with_tests = Figure("build_seconds_with_tests", "s", "")
    build.note = "make deb from a warm tree (DEB_BUILD_OPTIONS=nocheck: the unit tests are make check's)"
    with_tests.note = "the same build running the unit tests in dh_auto_test, as sbuild's does"
    make_deb = ["make", "-C", str(ROOT), "deb"]
    build_with_tests = [str(ROOT / "bin" / "oignons-mail"), "build", "--site", str(SITE_SOURCE)]
    with LOG.open("w") as log:
        _run(log, make_deb)
        for _ in range(runs):
            build.values.append(seconds_of(lambda: _run(log, make_deb)))
            with_tests.values.append(seconds_of(lambda: _run(log, build_with_tests)))
    return [build, with_tests]


def _run(log: IO[str], argv: list[str]) -> None:
    subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=BUILD_TIMEOUT, check=True)


def generated_site(nodes: int) -> str:
    """sites/nos-oignons.toml with `nodes` node pins, nodes/5 transports and nodes/10 Schleuder lists."""
    text = SITE_SOURCE.read_text(encoding="utf-8")
    pins = ", ".join(f'node{index} = "{_pin(index)}"' for index in range(nodes))
    lists = ", ".join(f'"list{index}@nos-oignons.net"' for index in range(max(1, nodes // 10)))
    text = _replace_line(text, "node_pins = ", f"node_pins = {{ {pins} }}")
    text = _replace_line(text, "schleuder_lists = ", f"schleuder_lists = [{lists}]")
    transports = "".join(
        f'\n[[relay.transports]]\nname = "bench{index}"\nprocess_limit = 5\n'
        f'destinations = ["dest{index}.example", "other{index}.example"]\ndestination_rate_delay = "1s"\n'
        for index in range(nodes // 5)
    )
    # The [[relay.transports]] tables must come before the next top-level table.
    return text.replace("\n[smarthost]\n", f"{transports}\n[smarthost]\n", 1)


def _pin(index: int) -> str:
    return ":".join(f"{byte:02x}" for byte in index.to_bytes(32, "big"))


def _replace_line(text: str, start: str, line: str) -> str:
    new, count = re.subn(rf"(?m)^{re.escape(start)}.*$", lambda _: line, text)
    if count != 1:
        raise RuntimeError(f"{SITE_SOURCE} no longer has one line starting with {start!r}: update bench/packaging.py")
    return new


def _render_seconds(site_file: Path) -> float:
    return seconds_of(lambda: render(load_site(site_file)))


def render_figures(runs: int) -> list[Figure]:
    """Loading, validating and rendering generated sites of 10, 100 and 1000 nodes."""
    figures = []
    with tempfile.TemporaryDirectory(prefix="oignons-mail-bench-") as directory:
        for nodes in SCALES:
            site_file = Path(directory) / f"site-{nodes}.toml"
            site_file.write_text(generated_site(nodes), encoding="utf-8")
            files = render(load_site(site_file))  # warm-up, and a check that the site is valid
            figure = Figure(f"render_ms_{nodes}_nodes", "ms", "linear" if nodes != SCALES[-1] else "linear in nodes")
            figure.values = [1000 * _render_seconds(site_file) for _ in range(max(runs, RENDER_RUNS))]
            figure.note = f"{nodes} node pins, {nodes // 5} transports, {max(1, nodes // 10)} lists: {len(files)} files"
            figures.append(figure)
    return figures
