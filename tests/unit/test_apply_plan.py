"""Golden cases of postfix-apply's plan: what it sets, puts back and removes, without root or Postfix.

scripts/postfix-apply-plan is a pure function from files to files
(docs/apply-plan.md).  Each folder of tests/golden/apply is one case:
`in/action` (apply or revert), `in/live` (recorded `postconf -n`, `-M`, `-F`
of a Postfix, and the tables built), `in/record` (the package's record),
`in/data` (the version's data), `in/settings` (the postinst's settings, if
any); `out/` is exactly what the plan writes.  A difference fails with a
unified diff; OIGNONS_MAIL_UPDATE_GOLDEN=1 rewrites `out/` instead (refused
under CI, like the render goldens).
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.unit.test_golden import update_mode

REPO = Path(__file__).resolve().parents[2]
PLANNER = REPO / "scripts" / "postfix-apply-plan"
GOLDEN = REPO / "tests" / "golden" / "apply"
CASES = sorted(path.name for path in GOLDEN.iterdir() if (path / "in" / "action").is_file())
REFRESH = "OIGNONS_MAIL_UPDATE_GOLDEN=1 /usr/bin/python3 -m pytest tests/unit/test_apply_plan.py"


def plan(case: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Run the plan of one case into out (which it creates), in a clean environment."""
    out.mkdir(parents=True)
    action = (case / "in" / "action").read_text(encoding="utf-8").strip()
    arguments = [action, *(str(case / "in" / name) for name in ("live", "record", "data")), str(out)]
    if (case / "in" / "settings").is_file():
        arguments.append(str(case / "in" / "settings"))
    return subprocess.run(
        ["sh", str(PLANNER), *arguments],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        timeout=120,
    )


def files(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_the_cases_are_there() -> None:
    assert {
        "relay-first-install",
        "relay-again",
        "relay-upgrade",
        "relay-downgrade",
        "relay-removal",
        "relay-hand-changes-upgrade",
        "relay-hand-changes-removal",
        "smarthost-first-install",
    } <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_apply_plan_golden(case: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = plan(GOLDEN / case, out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    golden = GOLDEN / case / "out"
    if update_mode(dict(os.environ)):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
        return
    made, expected = files(out), files(golden)
    difference = "".join(
        "".join(
            difflib.unified_diff(
                expected.get(name, "").splitlines(keepends=True),
                made.get(name, "").splitlines(keepends=True),
                f"golden/{name}",
                f"plan/{name}",
            )
        )
        for name in sorted(set(made) | set(expected))
    )
    assert made == expected, (
        f"the plan of {case} differs from {golden.relative_to(REPO)}; if intended, run {REFRESH}\n{difference}"
    )


def test_a_run_again_on_the_same_input_plans_the_same(tmp_path: Path) -> None:
    """A run that dies before its commit changed nothing: the next run, on the same input, plans the same."""
    case = GOLDEN / "relay-upgrade"
    assert plan(case, tmp_path / "first").returncode == 0
    assert plan(case, tmp_path / "again").returncode == 0
    assert files(tmp_path / "first") == files(tmp_path / "again") != {}


def test_a_missing_table_source_is_refused(tmp_path: Path) -> None:
    case = tmp_path / "case"
    shutil.copytree(GOLDEN / "relay-upgrade", case)
    (case / "in" / "data" / "tables.d" / "senders").unlink()
    result = plan(case, tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr == f"the table source {case}/in/data/tables.d/senders is missing\n"


def test_an_unknown_master_cf_option_is_refused(tmp_path: Path) -> None:
    case = tmp_path / "case"
    shutil.copytree(GOLDEN / "relay-upgrade", case)
    with (case / "in" / "data" / "master.cf").open("a", encoding="utf-8") as master:
        master.write("-P smtp/inet = x\n")
    result = plan(case, tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr == f"unknown master.cf option in {case}/in/data/master.cf: -P\n"
