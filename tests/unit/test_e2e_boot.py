"""The end-to-end harness's boot check: a unit that fails at its first start fails the run.

Only the units known to fail at boot now and then for a passing reason
(tests/e2e/machines.py, FLAKY_AT_BOOT, by name) get a second start.
"""

from __future__ import annotations

import pytest
from tests.e2e.machines import FLAKY_AT_BOOT, units_to_start_again

MAIL_UNITS = ["postfix.service", "postfix@-.service", "rspamd.service", "unbound.service", "schleuder-api-daemon"]


@pytest.mark.parametrize("unit", MAIL_UNITS)
def test_a_mail_unit_that_failed_at_boot_fails_the_run(unit: str) -> None:
    with pytest.raises(AssertionError, match=f"units failed at their first start: {unit}$"):
        units_to_start_again("relay", ["systemd-journal-flush.service", unit])


def test_only_the_known_flaky_units_are_started_again() -> None:
    assert len(FLAKY_AT_BOOT) > 0
    assert units_to_start_again("relay", list(FLAKY_AT_BOOT)) == list(FLAKY_AT_BOOT)
    assert units_to_start_again("relay", []) == []
    assert all(unit.endswith(".service") for unit in FLAKY_AT_BOOT)
    assert not any(name in unit for unit in FLAKY_AT_BOOT for name in ("postfix", "rspamd", "unbound", "schleuder"))
