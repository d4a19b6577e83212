"""The end-to-end harness's work directories: a second run in the same tree is refused, not interleaved.

Each run empties its work directory first (tests/e2e/machines.py,
fresh_work_directory); without the lock, a second run would remove the
directory of a run still using it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.machines import fresh_work_directory

REPOSITORY = Path(__file__).resolve().parents[2]
# Another process takes the directory, says so, and holds it until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from tests.e2e.machines import fresh_work_directory
fresh_work_directory(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_run_is_refused_while_the_first_holds_the_directory(tmp_path: Path) -> None:
    work = tmp_path / "e2e"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(work)],
        cwd=REPOSITORY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        (work / "in-use").write_text("the first run's file\n", encoding="utf-8")
        with pytest.raises(RuntimeError, match=rf"in use by another end-to-end run \(PID {holder.pid}\)"):
            fresh_work_directory(work)
        assert (work / "in-use").exists(), "the refused run removed the first run's directory"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    # Once the first run has ended, the directory is this run's, emptied.
    assert list(fresh_work_directory(work).iterdir()) == []
    # The same process may empty it again (a second test bed of one run).
    (work / "again").touch()
    assert list(fresh_work_directory(work).iterdir()) == []
