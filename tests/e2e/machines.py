"""The test network and the booted systems of the end-to-end tests.

Three network namespaces, made with `ip netns`:

    marcuse (smarthost) 10.237.0.2 ──veth── 10.237.0.1 bulbe (relay) 10.237.1.1 ──veth── 10.237.1.2-4 world

"world" stands for the rest of the Internet: no container runs there, only the
harness's SMTP sink (10.237.1.2, the MX of the fake outside domains) and its
SMTP clients (10.237.1.3 is on the test blocklist, 10.237.1.4 is not).  No
namespace has a default route: nothing leaves the test network.

Each system boots with systemd as PID 1 (`systemd-nspawn -b`) in its own
namespace; commands run inside it through nsenter.  Every wait is bounded, and
`stop()` / `destroy()` are safe to call whatever state the test left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from tests.system.debian_system import COMMAND_ENVIRONMENT, DebianSystem, Result, run_command

# Every name a run gives the host (network namespaces, machine names) starts
# with this prefix and the pytest process's PID, so that a later run can tell
# the leftovers of a killed run (whose PID is gone) from a live one.
RUN_PREFIX = "oe2e"

RELAY_ADDRESS = "10.237.0.1"
SMARTHOST_ADDRESS = "10.237.0.2"
RELAY_WORLD_ADDRESS = "10.237.1.1"
SINK_ADDRESS = "10.237.1.2"
LISTED_CLIENT_ADDRESS = "10.237.1.3"
CLEAN_CLIENT_ADDRESS = "10.237.1.4"
PREFIX = 24

# The containers get the unified cgroup hierarchy (cgroup v2) even on a host
# that runs the hybrid one, as these machines do: trixie's systemd 257 in a
# hybrid container sometimes fails its first units at boot ("Failed to spawn
# executor: No such file or directory" for systemd-remount-fs.service, the
# cgroup not yet there on the unified side), and cgroup v2 is what both
# releases use on real hosts.
NSPAWN_ENVIRONMENT = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
COMMAND_TIMEOUT = 120.0
BOOT_TIMEOUT = 180.0
POWEROFF_TIMEOUT = 120.0

T = TypeVar("T")


def run(
    argv: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT,
    input_text: str | None = None,
    environment: Mapping[str, str] | None = None,
) -> Result:
    """A host command bounded by this harness's usual time limit (COMMAND_TIMEOUT)."""
    return run_command(argv, timeout=timeout, input_text=input_text, environment=environment)


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5, diagnose: str = ""
) -> T:
    """Call probe until it returns something else than None; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{diagnose}" if diagnose else "")
            )
        time.sleep(interval)


@dataclass(frozen=True)
class TestNetwork:
    """The three namespaces and the two veth pairs between them."""

    relay: str
    smarthost: str
    world: str

    __test__ = False  # not a pytest test class

    @classmethod
    def for_run(cls, pid: int) -> TestNetwork:
        prefix = f"{RUN_PREFIX}{pid}"
        return cls(f"{prefix}-bulbe", f"{prefix}-marcuse", f"{prefix}-world")

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.relay, self.smarthost, self.world)

    def create(self) -> None:
        for namespace in self.namespaces:
            run(["ip", "netns", "add", namespace]).check(f"ip netns add {namespace}")
            self.ip(namespace, "link", "set", "lo", "up")
        # The veths are created directly inside their namespaces: their names
        # never meet the host's interfaces or another run's.
        run(
            ["ip", "link", "add", "to-marcuse", "netns", self.relay, "type", "veth",
             "peer", "name", "to-bulbe", "netns", self.smarthost]
        ).check("veth bulbe-marcuse")  # fmt: skip
        run(
            ["ip", "link", "add", "to-world", "netns", self.relay, "type", "veth",
             "peer", "name", "to-bulbe", "netns", self.world]
        ).check("veth bulbe-world")  # fmt: skip
        self.address(self.relay, "to-marcuse", RELAY_ADDRESS)
        self.address(self.smarthost, "to-bulbe", SMARTHOST_ADDRESS)
        self.address(self.relay, "to-world", RELAY_WORLD_ADDRESS)
        for address in (SINK_ADDRESS, LISTED_CLIENT_ADDRESS, CLEAN_CLIENT_ADDRESS):
            self.address(self.world, "to-bulbe", address)
        for namespace, link in ((self.relay, "to-marcuse"), (self.relay, "to-world"), (self.smarthost, "to-bulbe"),
                                (self.world, "to-bulbe")):  # fmt: skip
            self.ip(namespace, "link", "set", link, "up")

    def ip(self, namespace: str, *arguments: str) -> None:
        run(["ip", "-n", namespace, *arguments]).check(f"ip -n {namespace} {' '.join(arguments)}")

    def address(self, namespace: str, link: str, address: str) -> None:
        # IPv4 only: no duplicate address detection, the address works at once.
        self.ip(namespace, "address", "add", f"{address}/{PREFIX}", "dev", link)

    def execute(self, namespace: str, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT,
                input_text: str | None = None) -> Result:  # fmt: skip
        """A host program run inside one of the namespaces (the sink, swaks, the pin helper)."""
        return run(["ip", "netns", "exec", namespace, *argv], timeout=timeout, input_text=input_text)

    def destroy(self) -> list[str]:
        """Delete the namespaces (and so the veths); return what could not be deleted."""
        return delete_namespaces(self.namespaces)


def delete_namespaces(namespaces: Sequence[str]) -> list[str]:
    """`ip netns del` those that exist; return what could not be deleted."""
    problems = []
    for namespace in namespaces:
        if Path("/run/netns", namespace).exists():
            result = run(["ip", "netns", "del", namespace], timeout=30)
            if result.returncode != 0:
                problems.append(f"ip netns del {namespace}: {result.stderr.strip()}")
    return problems


class Container:
    """A Debian system directory booted with systemd-nspawn in a network namespace."""

    def __init__(self, system: DebianSystem, machine: str, hostname: str, namespace: str, log: Path) -> None:
        self.system = system
        self.machine = machine
        self.hostname = hostname
        self.namespace = namespace
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._init_pid: int | None = None

    @property
    def release(self) -> str:
        return self.system.release

    def boot(self) -> None:
        """Start the container; `wait_booted` waits for the end of its boot."""
        (self.system.root / "etc/hostname").write_text(f"{self.hostname}\n")
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--register=no",
                "--keep-unit",
                "--boot",
                f"--directory={self.system.root}",
                f"--machine={self.machine}",
                f"--hostname={self.hostname}",
                f"--network-namespace-path=/run/netns/{self.namespace}",
                "--console=read-only",
                # The test network has its own DNS: resolv.conf stays as prepared.
                "--resolv-conf=off",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**COMMAND_ENVIRONMENT, **NSPAWN_ENVIRONMENT},
            start_new_session=True,  # a Ctrl-C of the test run does not reach the container
        )

    @property
    def init_pid(self) -> int:
        """The PID (on the host) of the container's systemd."""
        if self._init_pid is None:
            self._init_pid = wait_until(
                f"the init process of {self.machine}", self._find_init, 30, 0.2, self.boot_log()
            )
        return self._init_pid

    def _find_init(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"systemd-nspawn for {self.machine} is not running:\n{self.boot_log()}")
        return _container_init(self.process.pid)

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait for the end of the boot; return systemctl is-system-running's answer."""
        # Find systemd first: fails at once, with the console log, if nspawn died.
        _ = self.init_pid
        return wait_until(f"the boot of {self.machine}", self._settled_state, timeout, 1.0, self.boot_log())

    def _settled_state(self) -> str | None:
        """systemctl is-system-running's answer once the system has settled (running or degraded)."""
        answer = self.run("systemctl is-system-running", timeout=30).stdout.strip()
        return answer if answer in ("running", "degraded") else None

    def start_failed_units_again(self) -> str:
        """Start the units that failed during the boot once more; return the system's state then.

        Only the units of FLAKY_AT_BOOT, and those whose process systemd could
        not even spawn, get this second start (each one is reported as a
        warning); any other failed unit fails the run at once, with its status
        and journal (units_to_start_again).
        """
        listed = self.run("systemctl --failed --no-legend --no-pager --plain | awk '{ print $1 }'", timeout=30)
        results = {}
        for unit in listed.stdout.split():
            shown = self.run(f"systemctl show -p Result -p ExecMainStatus --value {unit}", timeout=30).stdout.split()
            results[unit] = " ".join(shown)  # "exit-code 219", "resources 0"
        try:
            to_start = units_to_start_again(self.machine, results)
        except AssertionError as error:
            # The unit's own account of its failure, so that a CI log says why.
            status = self.run(
                f"for unit in {' '.join(shlex.quote(unit) for unit in results)}; do"
                ' systemctl status --no-pager -l -n 0 "$unit"; journalctl -b --no-pager -n 30 -u "$unit"; done',
                timeout=30,
            )
            raise AssertionError(f"{error}\n{status.stdout}{status.stderr}") from None
        for unit in to_start:
            warnings.warn(
                f"{self.machine} ({self.release}): {unit} failed at boot ({results[unit]}); started again",
                stacklevel=1,
            )
            self.run(f"systemctl reset-failed {unit}; systemctl restart {unit}", timeout=COMMAND_TIMEOUT)

        what = f"{self.machine} to settle after starting its failed units again"
        return wait_until(what, self._settled_state, 60, 1.0)

    def run(self, script: str, timeout: float = COMMAND_TIMEOUT, input_text: str | None = None) -> Result:
        """Run a sh script as root inside the booted system."""
        argv = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c", script]
        return run(argv, timeout=timeout, input_text=input_text)

    def check(self, script: str, timeout: float = COMMAND_TIMEOUT, input_text: str | None = None) -> str:
        """Run a script that must succeed; return its standard output."""
        return self.run(script, timeout, input_text).check(f"on {self.machine}: {script}").stdout

    def boot_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def request_stop(self) -> None:
        """Ask the system to power off (SIGRTMIN+4 to its systemd, like `systemctl poweroff`)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        if self._init_pid is None:
            try:
                self._init_pid = self._find_init()
            except AssertionError:
                self._init_pid = None
        if self._init_pid is not None:
            _signal(self._init_pid, signal.SIGRTMIN + 4)
        else:
            process.terminate()

    def wait_stopped(self, timeout: float = POWEROFF_TIMEOUT) -> list[str]:
        """Wait for the poweroff (SIGKILL after timeout); return what went wrong."""
        problems: list[str] = []
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.machine} did not power off within {timeout:.0f}s: killed")
                if self._init_pid is not None:
                    _signal(self._init_pid, signal.SIGKILL)  # kills the whole PID namespace
                process.kill()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    problems.append(f"systemd-nspawn for {self.machine} survived SIGKILL")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # What nspawn may leave on the host after a shutdown.
        propagate = Path("/run/systemd/nspawn/propagate", self.machine)
        if propagate.is_dir():
            try:
                propagate.rmdir()
            except OSError as error:
                problems.append(f"{propagate}: {error}")
        return problems


RELOAD_TIMEOUT = 60.0


def master_pid(container: Container) -> str:
    """The PID of the running Postfix master(8), from its pid file in the queue directory."""
    queue = container.check("postconf -h queue_directory").strip()
    return container.check(f"cat {queue}/pid/master.pid").strip()


def reload_postfix(container: Container, before: str = "") -> None:
    """`before` (shell, e.g. postconf -e), then `postfix reload`; returns once the previous daemons have exited.

    `postfix reload` only signals the master. Until the master has handled the
    signal and each daemon of the previous generation has noticed (one in a
    session finishes it first), a connection or a delivery can still meet a
    process started with the previous settings or certificate.
    """
    # The master keeps its PID through a reload; its children are the daemons.
    daemons_now = f"pgrep -P {master_pid(container)} || true"
    previous = set(container.check(daemons_now).split())
    container.check(f"{before + ' && ' if before else ''}postfix reload", timeout=RELOAD_TIMEOUT)

    def previous_gone() -> bool | None:
        return None if previous & set(container.check(daemons_now).split()) else True

    wait_until(f"the Postfix daemons of {container.machine} from before the reload to exit", previous_gone,
               RELOAD_TIMEOUT)  # fmt: skip


@contextlib.contextmanager
def anvil_exemption(relay: Container, address: str) -> Iterator[None]:
    """Exempt `address` from the relay's anvil limits (smtpd_client_event_limit_exceptions) for a while.

    For a client whose own flood is not what is under test (testssl.sh's
    hundreds of connections, a benchmark's node sending one connection a
    message): the relay would cut it with 421 after its allowance.
    """
    key = "smtpd_client_event_limit_exceptions"
    was_set = relay.check(f"postconf -n {key}").strip()
    exceptions = relay.check(f"postconf -h {key}").strip()
    reload_postfix(relay, f"postconf -e '{key} = {exceptions} {address}'")
    try:
        yield
    finally:
        restore = f"postconf -e '{was_set}'" if was_set else f"postconf -X {key}"
        reload_postfix(relay, restore)


def stop_process(process: subprocess.Popen[bytes] | None) -> list[str]:
    """Terminate a harness server (sink, web server) if it runs, kill it after 10 s."""
    if process is None or process.poll() is not None:
        return []
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    return []


def boot_all(containers: Sequence[Container]) -> None:
    """Boot the systems together; fail, naming the failed units, unless each one ends up running."""
    for container in containers:
        container.boot()
    for container in containers:
        state = container.wait_booted()
        if state != "running":
            state = container.start_failed_units_again()
        if state != "running":
            failed = container.run("systemctl --failed --no-legend --no-pager").stdout
            raise AssertionError(f"{container.machine} ({container.release}) booted {state}: failed units:\n{failed}")


# On a loaded machine these fail at boot now and then for a passing reason
# (mailman3 timing out, systemd-journal-flush): one more start tells that from
# a unit that really fails.  Any other unit that fails at boot (postfix,
# rspamd, unbound, schleuder...) fails the run: a first start that fails is a bug.
FLAKY_AT_BOOT = ("systemd-journal-flush.service", "mailman3.service")
# systemd's own failure to start a unit's process, the host's whichever the
# unit: "Failed to spawn executor" (Result=resources: trixie's systemd under
# load, seen for systemd-journal-flush and the Mailman table's reload unit),
# "Failed at step CGROUP spawning" (exit status 219: bookworm's, seen for
# systemd-remount-fs).  Never a step our units configure (NAMESPACE is 226).
SPAWN_FAILED = "resources"
SPAWN_FAILED_STATUS = "219"


def spawn_failed(result: str) -> bool:
    """`result` is systemctl show's "Result ExecMainStatus", e.g. "exit-code 219"."""
    words = result.split()
    return bool(words) and (words[0] == SPAWN_FAILED or words[1:2] == [SPAWN_FAILED_STATUS])


def units_to_start_again(machine: str, failed: Mapping[str, str]) -> list[str]:
    """The failed units (unit: its "Result ExecMainStatus") to start once more; any other fails (AssertionError)."""
    others = [unit for unit, result in failed.items() if unit not in FLAKY_AT_BOOT and not spawn_failed(result)]
    if others:
        listed = ", ".join(f"{unit} ({failed[unit]})" for unit in others)
        raise AssertionError(f"{machine}: units failed at their first start: {listed}")
    return list(failed)


def undo(cleanup: Sequence[tuple[str, Callable[[], list[str]]]], what: str) -> None:
    """Run the cleanup actions, last first, every one whatever the others did; fail with what went wrong."""
    problems: list[str] = []
    for description, action in reversed(cleanup):
        try:
            problems += action()
        except Exception as error:
            problems.append(f"{description}: {error}")
    if problems:
        raise AssertionError(f"cleaning up {what} failed:\n" + "\n".join(problems))


def stop_all(containers: Sequence[Container], timeout: float = POWEROFF_TIMEOUT) -> list[str]:
    """Power several systems off at once; return what went wrong."""
    for container in containers:
        container.request_stop()
    problems: list[str] = []
    for container in containers:
        problems += container.wait_stopped(timeout)
    return problems


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def machine_name(role: str, pid: int) -> str:
    return f"{RUN_PREFIX}-{role}-{pid}"


# The work directories this process holds (path -> the open lock file).
_claimed: dict[Path, IO[str]] = {}


def fresh_work_directory(work: Path) -> Path:
    """Empty `work` for this run, after taking its lock for the rest of the process's life.

    Each run removes its work directory first: a second run in the same tree
    (a second `make e2e`, or bench beside it) would remove it under the first
    one, whose containers then fail at random.  The lock lives beside the
    directory (the removal keeps it); the kernel drops it when the process ends.
    """
    work = work.resolve()
    if work not in _claimed:
        work.parent.mkdir(parents=True, exist_ok=True)
        lock = (work.parent / f".{work.name}.lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise RuntimeError(
                f"{work} is in use by another end-to-end run (PID {holder}): run one at a time"
                " in a tree, or the second one in a separate clone (git clone)"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _claimed[work] = lock
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def sweep_killed_runs() -> list[str]:
    """Undo what runs killed without a chance to clean up (SIGKILL) left behind.

    A run's containers and namespaces carry its pytest PID (RUN_PREFIX); those
    of a PID that no longer exists are powered off hard (SIGKILL to the
    container's init ends its PID namespace and so its mounts), their system
    directories removed, their namespaces deleted.  Returns what was swept.
    """
    swept: list[str] = []
    pattern = re.compile(rf"^--machine={RUN_PREFIX}-\w+-(\d+)$")
    for proc, argv in _processes():
        if not argv[0].endswith("systemd-nspawn"):
            continue
        owners = [int(m.group(1)) for m in map(pattern.match, argv) if m]
        if not owners or _run_alive(owners[0]):
            continue
        directory = next((a.split("=", 1)[1] for a in argv if a.startswith("--directory=")), None)
        nspawn = int(proc.name)
        init = _container_init(nspawn)
        _signal(init if init is not None else nspawn, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            deadline = time.monotonic() + 30
            while Path(f"/proc/{nspawn}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        swept.append(f"container of dead run {owners[0]} (systemd-nspawn {nspawn})")
        if directory and Path(directory).name.startswith("oignons-mail-") and not Path(f"/proc/{nspawn}").exists():
            shutil.rmtree(directory, ignore_errors=True)
            swept.append(directory)
    netns = Path("/run/netns")
    for namespace in sorted(netns.iterdir()) if netns.is_dir() else []:
        found = re.match(rf"^{RUN_PREFIX}(\d+)-", namespace.name)
        if found and not _run_alive(int(found.group(1))):
            # What still runs there (the SMTP sink) would keep the namespace alive.
            for pid in _processes_in_network_namespace(namespace):
                _signal(pid, signal.SIGKILL)
                swept.append(f"process {pid} in {namespace.name}")
            run(["ip", "netns", "del", namespace.name], timeout=30)
            swept.append(f"network namespace {namespace.name}")
    return swept


def leftovers_of_run(pid: int) -> list[str]:
    """What the run of that PID still has on the host: nothing, once its test beds are torn down."""
    found = []
    netns = Path("/run/netns")
    prefix = f"{RUN_PREFIX}{pid}-"
    found += [
        f"network namespace {n.name}" for n in (netns.iterdir() if netns.is_dir() else []) if n.name.startswith(prefix)
    ]
    sink = str(Path(__file__).with_name("smtp_sink.py"))
    for proc, argv in _processes():
        container = argv[0].endswith("systemd-nspawn") and any(
            a.startswith(f"--machine={RUN_PREFIX}-") and a.endswith(f"-{pid}") for a in argv
        )
        # The sink runs as a child of the test run (orphaned: of PID 1).
        our_sink = sink in argv and _parent(int(proc.name)) in (pid, 1)
        if container or our_sink:
            found.append(f"process {proc.name}: {' '.join(argv)}")
    return found


def _processes() -> Iterator[tuple[Path, list[str]]]:
    """The host's processes (their /proc directory) with their command line; kernel threads have none."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0]:
            yield proc, argv


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), None)


def _processes_in_network_namespace(namespace: Path) -> list[int]:
    wanted = f"net:[{namespace.stat().st_ino}]"
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "ns/net") == wanted:
                    found.append(int(proc.name))
    return found


def _run_alive(pid: int) -> bool:
    """Whether the test run of that PID still runs (a reused PID runs something else).

    A pytest-xdist worker's command line does not name pytest, its parent's
    (the controlling pytest) does: look up a few generations.
    """
    for _generation in range(3):
        try:
            if b"pytest" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def _container_init(nspawn_pid: int) -> int | None:
    """The host PID of the child of systemd-nspawn that is PID 1 of its namespace."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) == 2 and nspid[1] == "1":
            return int(child)
    return None
