"""A run that dies after its commit is finished by the next run, exactly.

postfix-apply commits by renaming its staged record to a journal, then plays
the journal (moves the staged files in place).  Here a copy of it stops right
after the commit, as a crash or a power cut would; the next run must give
what an uninterrupted run gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import TEST_SITE, configured_postfix, copy_package, package_file, package_for_site
from tests.system.debian_system import RELEASES

PACKAGE = "oignons-mail-relay"
APPLY = f"/usr/lib/{PACKAGE}/postfix-apply"
# What Postfix reads, and the record.
STATE = f"postconf -n; postconf -M | sort; postconf -F | sort; cat /var/lib/{PACKAGE}/*.cf.*"
# A release that changes a key and drops a service.
CHANGE = f"""echo 'message_size_limit = 12345' >> /usr/share/{PACKAGE}/main.cf
sed -i -e '/^-M yahoo/d' -e '/^yahoo_/d' /usr/share/{PACKAGE}/master.cf /usr/share/{PACKAGE}/main.cf"""


@dataclass
class Crash:
    before: str
    crashed: str
    journal: str
    recovered: str
    uninterrupted: str


@pytest.fixture(scope="module", params=RELEASES)
def crash(request: pytest.FixtureRequest, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crash]:
    base = package_file(dist, PACKAGE)
    version = base.name.split("_")[1]
    deb_file = package_for_site(base, TEST_SITE, f"{version}+test1", tmp_path_factory.mktemp("crash"))
    with configured_postfix(request.param, "") as system:
        deb = copy_package(system, deb_file)
        system.run(f"apt-get install -y -q --no-install-recommends {deb}").check("install")
        before = system.run(STATE).check("state").stdout
        system.run(
            f"""set -e
            {CHANGE}
            sed 's/^    play_journal$/    exit 0/' {APPLY} > /root/dies-after-commit
            grep -q '^    exit 0$' /root/dies-after-commit
            sh /root/dies-after-commit apply {PACKAGE}"""
        ).check("a run that dies after its commit")
        crashed = system.run(STATE).check("state").stdout
        journal = system.run(f"ls /var/lib/{PACKAGE}/.journal").stdout
        system.run(f"{APPLY} apply {PACKAGE}").check("the next run")
        recovered = system.run(STATE).check("state").stdout
        # The same change, uninterrupted, from the same start.
        system.run(f"apt-get install -y -q --reinstall {deb}").check("reinstall")
        system.run(f"{CHANGE}\n{APPLY} apply {PACKAGE}").check("an uninterrupted run")
        uninterrupted = system.run(STATE).check("state").stdout
        yield Crash(before, crashed, journal, recovered, uninterrupted)


def test_a_crash_after_the_commit_leaves_a_journal_the_live_files_and_the_record(crash: Crash) -> None:
    assert "main.cf.applied" in crash.journal
    assert crash.crashed == crash.before


def test_the_next_run_finishes_it_exactly(crash: Crash) -> None:
    assert "message_size_limit = 12345" in crash.recovered
    assert "yahoo_" not in crash.recovered
    assert not [line for line in crash.recovered.splitlines() if line.startswith("yahoo ")]
    assert crash.recovered == crash.uninterrupted
