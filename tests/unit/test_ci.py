""".ci/run, the CI script: it says it is CI (CI=true) before any test runs.

The golden tests refuse OIGNONS_MAIL_UPDATE_GOLDEN=1 under CI=true (a run
that rewrites what it compares with proves nothing): that guard holds only
if CI sets CI=true, whatever its runner's environment has.
"""

from __future__ import annotations

from pathlib import Path

CI_RUN = Path(__file__).resolve().parents[2] / ".ci" / "run"


def test_ci_exports_ci_true_before_it_runs_make() -> None:
    lines = [line.strip() for line in CI_RUN.read_text(encoding="utf-8").splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    makes = [index for index, line in enumerate(commands) if line.startswith("make ")]
    assert makes != [], f"{CI_RUN} runs no make"
    assert "export CI=true" in commands[: makes[0]], f"{CI_RUN} must `export CI=true` before its first make"
