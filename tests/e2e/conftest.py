"""End-to-end mail tests: two booted Debian systems exchanging real mail (`make e2e`).

They need root, systemd-nspawn, mmdebstrap and a few minutes, so they run only
when OIGNONS_MAIL_E2E=1 (`make e2e` and `make check` set it): a plain `pytest tests` skips them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from tests.e2e.machines import leftovers_of_run, sweep_killed_runs  # noqa: E402
from tests.e2e.testbed import WORK, Artifacts, Testbed, build_artifacts, prefetch_base_systems, testbed  # noqa: E402

ENABLE_VARIABLE = "OIGNONS_MAIL_E2E"
# The two runs: each release once as the relay, the other as the smarthost.
PAIRS = [("trixie", "bookworm"), ("bookworm", "trixie")]
HOST_TOOLS = ("systemd-nspawn", "nsenter", "ip", "mmdebstrap", "openssl", "swaks", "dpkg-buildpackage", "testssl")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: boots two Debian systems with systemd-nspawn and sends real mail (make e2e)"
    )
    if os.environ.get(ENABLE_VARIABLE) == "1":
        # A run stopped by SIGTERM or SIGHUP (a CI time-out, a closed terminal)
        # unwinds like one stopped by Ctrl-C: pytest then tears the test beds
        # down (containers, namespaces, directories).
        for number in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, _interrupt)


def _interrupt(number: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(number).name}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    enabled = os.environ.get(ENABLE_VARIABLE) == "1"
    skip = pytest.mark.skip(reason=f"end-to-end mail tests run with `make e2e` ({ENABLE_VARIABLE}=1)")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)
            if not enabled:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Artifacts]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot containers and make network namespaces: run them as root (make e2e)")
    missing = [program for program in HOST_TOOLS if shutil.which(program) is None]
    if missing:
        pytest.fail(f"missing host tools: {', '.join(missing)} (make e2e installs them)")
    for leftover in sweep_killed_runs():
        print(f"removed the leftover of a killed run: {leftover}")
    # The base systems (cached; built the first time) while the packages build.
    with prefetch_base_systems(PAIRS):
        built = build_artifacts(worker_directory())
    yield built
    # Torn down last, after every test bed: the run must have undone all it made.
    leftovers = leftovers_of_run(os.getpid())
    assert leftovers == [], "the end-to-end run left behind:\n" + "\n".join(leftovers)


def worker_directory() -> Path:
    """This run's own directory under build/e2e: pytest-xdist's workers (make check) each have one."""
    return WORK / os.environ.get("PYTEST_XDIST_WORKER", "main")


@contextmanager
def reported_testbed(artifacts: Artifacts, pair: tuple[str, str], with_tool: bool = False) -> Iterator[Testbed]:
    """A test bed whose notes go to the run's report.txt at the end."""
    relay_release, smarthost_release = pair
    with testbed(artifacts, relay_release, smarthost_release, with_tool) as result:
        try:
            yield result
        finally:
            if result.notes:
                with (artifacts.work / "report.txt").open("a", encoding="utf-8") as report:
                    report.writelines(f"{note}\n" for note in result.notes)


@pytest.fixture(scope="module", params=PAIRS, ids=[f"relay-{r}+smarthost-{s}" for r, s in PAIRS])
def bed(request: pytest.FixtureRequest, artifacts: Artifacts) -> Iterator[Testbed]:
    with reported_testbed(artifacts, request.param) as result:
        yield result
