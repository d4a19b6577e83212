"""A run that dies after its commit, or anywhere in playing its journal, is finished by the next run, exactly.

postfix-apply commits by renaming its staged record to a journal, then plays
the journal (moves the staged files in place, then the record).  Here copies
of it stop at each point of that, as a crash or a power cut would: right
after the commit, after the tables, between master.cf and main.cf, after the
stage, between two record files, before the signal.  The next run must give
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
CRASH = "exit 0  # the crash"
# Where a copy of postfix-apply stops: sed's address, its command ("i": before
# the line, "a": after it, "c": instead of it) and the line put there.  Each
# line is in play_journal; in a loop, the stop comes after the first file.
CRASH_POINTS = {
    "after the commit": (r"/^    play_journal$/", "c", CRASH),
    "after the tables": (r"/^        for file in master.cf main.cf; do$/", "i", CRASH),
    "between master.cf and main.cf": (
        r'/^            \[ ! -e "\$stage\/\$file" \] || mv -f/',
        "a",
        f'[ "$file" != master.cf ] || {CRASH}',
    ),
    "after the stage": (r'/^        rm -rf "\$stage"$/', "a", CRASH),
    "between two record files": (r'/^            mv "\$JOURNAL\/\$file" "\$RECORD\/\$file"$/', "a", CRASH),
    "before the signal": (r'/^    signal=\$(cat "\$JOURNAL\/restart")$/', "i", CRASH),
}
# Where nothing Postfix or the record shows has moved yet (the change has no table).
NOTHING_MOVED = ("after the commit", "after the tables")


@dataclass
class Crash:
    before: str
    crashed: str
    journal: str
    recovered: str


@dataclass
class Crashes:
    by_point: dict[str, Crash]
    uninterrupted: str


def crashing_copy(point: str) -> str:
    """sh that writes /root/crash-copy: postfix-apply stopping at `point`, checked to have the stop once."""
    address, command, crash = CRASH_POINTS[point]
    return f"""sed '{address}{command}\\
{crash}
' {APPLY} > /root/crash-copy
[ "$(grep -c '# the crash$' /root/crash-copy)" = 1 ]"""


@pytest.fixture(scope="module", params=RELEASES)
def crashes(request: pytest.FixtureRequest, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashes]:
    base = package_file(dist, PACKAGE)
    version = base.name.split("_")[1]
    deb_file = package_for_site(base, TEST_SITE, f"{version}+test1", tmp_path_factory.mktemp("crash"))
    with configured_postfix(request.param, "") as system:
        deb = copy_package(system, deb_file)
        by_point = {}
        for point in CRASH_POINTS:
            # Version N as installed, each time from the package.
            system.run(f"apt-get install -y -q --reinstall --no-install-recommends {deb}").check("install")
            before = system.run(STATE).check("state").stdout
            system.run(f"set -e\n{crashing_copy(point)}\n{CHANGE}\nsh /root/crash-copy apply {PACKAGE}").check(
                f"a run that dies {point}"
            )
            crashed = system.run(STATE).check("state").stdout
            journal = system.run(f"ls /var/lib/{PACKAGE}/.journal").stdout
            system.run(f"{APPLY} apply {PACKAGE}").check("the next run")
            recovered = system.run(STATE).check("state").stdout
            by_point[point] = Crash(before, crashed, journal, recovered)
        # The same change, uninterrupted, from the same start.
        system.run(f"apt-get install -y -q --reinstall {deb}").check("reinstall")
        system.run(f"{CHANGE}\n{APPLY} apply {PACKAGE}").check("an uninterrupted run")
        uninterrupted = system.run(STATE).check("state").stdout
        yield Crashes(by_point, uninterrupted)


def test_a_crash_after_the_commit_leaves_a_journal_the_live_files_and_the_record(crashes: Crashes) -> None:
    assert "main.cf.applied" in crashes.by_point["after the commit"].journal


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_leaves_the_journal_for_the_next_run(crashes: Crashes, point: str) -> None:
    crash = crashes.by_point[point]
    assert crash.journal.split(), f"no journal left by a crash {point}"
    if point in NOTHING_MOVED:
        assert crash.crashed == crash.before
    else:
        assert crash.crashed != crash.before, f"a crash {point} changed nothing: it did not stop in the replay"


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_the_next_run_finishes_it_exactly(crashes: Crashes, point: str) -> None:
    recovered = crashes.by_point[point].recovered
    assert "message_size_limit = 12345" in recovered
    assert "yahoo_" not in recovered
    assert not [line for line in recovered.splitlines() if line.startswith("yahoo ")]
    assert recovered == crashes.uninterrupted
