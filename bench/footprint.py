"""What installing a node or a relay brings, beside stock Postfix: packages and disk space.

    python3 bench/footprint.py DIST [OTHER_DIST]     (as root; docs/another-site.md)

In a fresh bookworm system with exim4 (tests/system's EXIM4_SYSTEM base, a
standard system's mail setup), `apt-get install --assume-no` of each case
prints what apt would install, Recommends included as apt installs them:
the count of new packages and "After this operation, N MB".  DIST holds
the default site's .debs (make deb); OTHER_DIST, optional, another site's
(no Mailman, no Schleuder), for its relay.  `make bench` takes the same
figures for dist/ (bench/figures.py's "footprint" group).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.system.debian_system import EXIM4_SYSTEM, DebianSystem, base_tarball

if TYPE_CHECKING:
    from bench.measure import Figure

RELEASE = "bookworm"
# What the packages had before python3 alone sufficed (the tool's Depends and Recommends then).
FORMER_TOOL_DEPENDENCIES = "python3-debian python3-jinja2 python3-dnspython"
_NEW_RE = re.compile(r"(\d+) newly installed")
_SPACE_RE = re.compile(r"After this operation, ([0-9.,]+) ([kMG]B) of additional disk space")
_MEGABYTES = {"kB": 0.001, "MB": 1.0, "GB": 1000.0}
DIST = Path(__file__).resolve().parents[1] / "dist"


def deb(dist: Path, package: str) -> Path:
    (found,) = sorted(dist.glob(f"{package}_*_all.deb"))
    return found


def footprint(system: DebianSystem, arguments: str) -> tuple[int | None, float | None]:
    """What apt would install: the count of new packages, and the disk space in MB."""
    result = system.run(f"apt-get install --assume-no {arguments} 2>&1 || true")
    new, space = _NEW_RE.search(result.stdout), _SPACE_RE.search(result.stdout)
    megabytes = float(space.group(1).replace(",", "")) * _MEGABYTES[space.group(2)] if space else None
    return (int(new.group(1)) if new else None), megabytes


def measure(dists: list[Path]) -> list[tuple[str, int | None, float | None]]:
    """(case, new packages, MB) for each case, in a fresh bookworm system with exim4."""
    system = DebianSystem(base_tarball(RELEASE, EXIM4_SYSTEM), RELEASE)
    found = []
    try:
        system.run("apt-get update -q").check("apt-get update")
        paths = {}
        for index, dist in enumerate(dists):
            for package in ("oignons-mail-smarthost", "oignons-mail", "oignons-mail-relay"):
                paths[(index, package)] = system.copy_in(deb(dist, package), f"/root/{index}-{package}.deb")
        node = f"{paths[(0, 'oignons-mail-smarthost')]} {paths[(0, 'oignons-mail')]}"
        relay = f"{paths[(0, 'oignons-mail-relay')]} {paths[(0, 'oignons-mail')]}"
        cases = [
            ("apt install postfix (stock)", "postfix"),
            ("apt install oignons-mail-smarthost (its Recommends: oignons-mail)", node),
            ("the same with the tool's former dependencies", f"{node} {FORMER_TOOL_DEPENDENCIES}"),
            ("the node and unattended-upgrades (the keyring's Recommends)", f"{node} unattended-upgrades"),
            ("apt install oignons-mail-relay, default site (Mailman, Schleuder)", relay),
        ]
        if len(dists) > 1:
            other = f"{paths[(1, 'oignons-mail-relay')]} {paths[(1, 'oignons-mail')]}"
            cases.append(("apt install oignons-mail-relay, a site without Mailman or Schleuder", other))
        for what, arguments in cases:
            found.append((what, *footprint(system, arguments)))
    finally:
        system.remove()
    return found


def footprint_figures(runs: int) -> list[Figure]:
    """make bench's figures for dist/ (one run: apt's answer does not vary)."""
    # Here, not at the top: run as a script, bench/bench.py hides the bench package.
    from bench.measure import Figure  # noqa: PLC0415

    figures = []
    for what, packages, megabytes in measure([DIST]):
        figures.append(Figure(f"footprint: {what}, packages", "packages", "", [] if packages is None else [packages]))
        figures.append(Figure(f"footprint: {what}, disk", "MB", "", [] if megabytes is None else [megabytes]))
    return figures


def main(argv: list[str]) -> int:
    for what, packages, megabytes in measure([Path(a).resolve() for a in argv]):
        space = "?" if megabytes is None else f"{megabytes:.1f} MB"
        print(f"{what}: {'?' if packages is None else packages} packages, {space}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
