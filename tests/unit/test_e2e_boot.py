"""The end-to-end harness's boot check: a unit that fails at its first start fails the run.

Only the units known to fail at boot now and then for a passing reason
(tests/e2e/machines.py, FLAKY_AT_BOOT, by name), and those whose process
systemd could not spawn (Result=resources), get a second start.
"""

from __future__ import annotations

import pytest
from tests.e2e.machines import FLAKY_AT_BOOT, SPAWN_FAILED, units_to_start_again

MAIL_UNITS = ["postfix.service", "postfix@-.service", "rspamd.service", "unbound.service", "schleuder-api-daemon"]


@pytest.mark.parametrize("unit", MAIL_UNITS)
@pytest.mark.parametrize("result", ["exit-code", "timeout", "signal", "core-dump", "start-limit-hit"])
def test_a_mail_unit_that_failed_at_boot_fails_the_run(unit: str, result: str) -> None:
    failed = {"systemd-journal-flush.service": "exit-code", unit: result}
    with pytest.raises(AssertionError, match=rf"units failed at their first start: {unit} \({result}\)$"):
        units_to_start_again("relay", failed)


def test_only_the_known_flaky_units_are_started_again() -> None:
    assert len(FLAKY_AT_BOOT) > 0
    flaky = dict.fromkeys(FLAKY_AT_BOOT, "timeout")
    assert units_to_start_again("relay", flaky) == list(FLAKY_AT_BOOT)
    assert units_to_start_again("relay", {}) == []
    assert all(unit.endswith(".service") for unit in FLAKY_AT_BOOT)
    assert not any(name in unit for unit in FLAKY_AT_BOOT for name in ("postfix", "rspamd", "unbound", "schleuder"))


def test_a_unit_systemd_could_not_spawn_is_started_again() -> None:
    failed = {
        "oignons-mail-relay-mailman-table.service": f"{SPAWN_FAILED} 0",
        "systemd-remount-fs.service": "exit-code 219",  # Failed at step CGROUP spawning
        "mailman3.service": "timeout 0",
    }
    assert units_to_start_again("relay", failed) == list(failed)


@pytest.mark.parametrize("status", ["226", "1", "203"])  # NAMESPACE (a confinement error), the command's own, EXEC
def test_another_exit_status_fails_the_run(status: str) -> None:
    with pytest.raises(AssertionError, match=r"postfix@-\.service"):
        units_to_start_again("relay", {"postfix@-.service": f"exit-code {status}"})
