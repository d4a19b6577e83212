"""Figures of site validation at scale: a site file with 10,000 and 100,000 list entries.

Validation must grow linearly with the size of the file (a list's `in` once
made 300,000 users_to_root entries take minutes); the figure per entry at
both sizes shows it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from bench.measure import Figure, seconds_of
from oignons_mail.site import load_site

ROOT = Path(__file__).resolve().parents[1]
SITE_SOURCE = ROOT / "sites" / "nos-oignons.toml"
ENTRIES = (10_000, 100_000)
VALIDATE_RUNS = 3  # 100,000 entries take about a second


def site_with_users(entries: int) -> str:
    """The default site with `entries` users in site.users_to_root."""
    users = ", ".join(f'"user{index}"' for index in range(entries))
    text = SITE_SOURCE.read_text(encoding="utf-8")
    return re.sub(r"(?ms)^users_to_root = \[.*?^\]", lambda _: f"users_to_root = [{users}]", text, count=1)


def _milliseconds(site_file: Path) -> float:
    return 1000 * seconds_of(lambda: load_site(site_file))


def validate_figures(runs: int) -> list[Figure]:
    """load_site (read, parse the TOML, validate) of generated sites."""
    figures = []
    with tempfile.TemporaryDirectory(prefix="oignons-mail-bench-") as directory:
        for entries in ENTRIES:
            site_file = Path(directory) / f"site-{entries}.toml"
            site_file.write_text(site_with_users(entries), encoding="utf-8")
            assert len(load_site(site_file).users_to_root) == entries  # warm-up, and the site is the one meant
            figure = Figure(f"validate_ms_{entries // 1000}k_entries", "ms", "linear in entries")
            figure.values = [_milliseconds(site_file) for _ in range(min(runs, VALIDATE_RUNS))]
            figure.note = f"oignons-mail validate of the default site with {entries} site.users_to_root entries"
            figures.append(figure)
    return figures
