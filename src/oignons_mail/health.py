#!/usr/bin/python3
"""Fleet health: the heartbeat format, the relay's record of heartbeats, fleet states, reports, metrics.

Standard library only, and self-contained: the tool imports it (`oignons-mail
fleet`, `status`), and the relay package installs this very file as its
pipe(8) receiver (`/usr/lib/oignons-mail-relay/heartbeat-receiver`), so that
the format's rules and the state's place exist once.  The node's sender (POSIX
sh) reads the same constants from a file rendered from this module
(`/usr/share/oignons-mail-<role>/heartbeat.conf`, `sender_config`).

A heartbeat is network input: `parse_heartbeat` refuses anything but the
exact format (bounded size, UTF-8, known keys, each value by its own rule);
the receiver logs and drops what it refuses, and always exits 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import syslog
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

# -- the one source of the values the sender, the receiver and the tool share --

# The local part of the relay's heartbeat address (at the site's domain by default).
HEARTBEAT_LOCAL_PART = "heartbeat"
HEARTBEAT_SUBJECT = "oignons-mail heartbeat"
# The first body line: the format's name and version.
FORMAT_LINE = "oignons-mail-heartbeat: 1"
# A heartbeat is a few hundred bytes; a message larger than this is not one.
MAX_HEARTBEAT_BYTES = 16 * 1024
# The relay keeps at most this many hosts: a node that sends under many names
# (only nodes and local programs may send) cannot fill the disk.
MAX_HOSTS = 4096
# The header the relay prepends to a node's mail (check_ccert_access): the
# node's name from relay.node_pins, by its certificate.  Only a copy above the
# relay's own Received: header counts (Postfix writes access-table PREPENDs
# before it; whatever the client sent comes after it).
NODE_HEADER = "X-Oignons-Mail-Node"
STATE_DIRECTORY = "/var/lib/oignons-mail-relay/heartbeats"
REPORT_STATE = "/var/lib/oignons-mail-relay/fleet-report.json"
FLEET_CONFIG = "/usr/share/oignons-mail-relay/fleet.json"
# Debian's prometheus-node-exporter textfile collector directory.
PROMETHEUS_DIRECTORY = "/var/lib/prometheus/node-exporter"
PROMETHEUS_FILE = "oignons-mail.prom"  # the host's own figures (the sender)
FLEET_PROMETHEUS_FILE = "oignons-mail-fleet.prom"  # the relay's hosts by state (the report)
# The syslog tag of the receiver (journalctl -t oignons-mail-heartbeat).
LOG_TAG = "oignons-mail-heartbeat"
# A heartbeat more than this far in the future (a wrong clock) would lock its
# host's record against every later one: refused.
MAX_CLOCK_AHEAD_SECONDS = 86400

INTEGER_KEYS = ("active", "deferred", "hold", "oldest_deferred_seconds", "queue_free_bytes")
TEXT_KEYS = ("host", "version", "postfix", "deferral_reason", "time")
# Every key, in the order the sender writes them; each is required.
KEYS = ("host", "version", "postfix", *INTEGER_KEYS, "deferral_reason", "time")

_HOST_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_VERSION_RE = re.compile(r"[0-9][A-Za-z0-9.+~:-]{0,63}|unknown")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
MAX_REASON_CHARS = 300
MAX_INTEGER_DIGITS = 19


class HeartbeatError(ValueError):
    """A message that is not a well-formed heartbeat: logged and dropped."""


@dataclass(frozen=True)
class Heartbeat:
    """What one host said about itself."""

    host: str  # a host label (the node's short name, as in relay.node_pins)
    version: str  # this package's version on the host
    postfix: str  # Postfix's mail_version
    active: int
    deferred: int
    hold: int
    oldest_deferred_seconds: int
    queue_free_bytes: int
    deferral_reason: str  # the most recent deferral's reason, "" when none
    time: str  # when it was made, ISO 8601 UTC (YYYY-MM-DDTHH:MM:SSZ)

    @property
    def timestamp(self) -> float:
        return parse_time(self.time)


def host_name(value: str) -> str:
    """A host label: lower-case letters, digits and '-', as relay.node_pins names the nodes."""
    if not _HOST_RE.fullmatch(value):
        raise HeartbeatError(f"host {value!r} is not a host name (a lower-case label of letters, digits, '-')")
    return value


def version_pattern_matches(value: str) -> bool:
    """A version as the heartbeat carries it (Debian's characters)."""
    return _VERSION_RE.fullmatch(value) is not None


def parse_time(value: str) -> float:
    if not _TIME_RE.fullmatch(value):
        raise HeartbeatError(f"time {value!r} is not ISO 8601 UTC (YYYY-MM-DDTHH:MM:SSZ)")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise HeartbeatError(f"time {value!r} is not a date") from None


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(value: str) -> bool:
    return all(c.isprintable() for c in value)


def _value(key: str, raw: str) -> str | int:
    if key in INTEGER_KEYS:
        if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_INTEGER_DIGITS:
            raise HeartbeatError(f"{key} {raw!r} is not a whole number")
        return int(raw)
    if key == "host":
        return host_name(raw)
    if key in ("version", "postfix"):
        if not _VERSION_RE.fullmatch(raw):
            raise HeartbeatError(f"{key} {raw!r} is not a version")
        return raw
    if key == "time":
        parse_time(raw)
        return raw
    if len(raw) > MAX_REASON_CHARS or not _printable(raw):
        raise HeartbeatError(f"{key} is longer than {MAX_REASON_CHARS} characters or not printable")
    return raw


def parse_body(text: str) -> Heartbeat:
    """The body's `key: value` lines, strictly: the format line, then every key once, nothing else."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != FORMAT_LINE:
        raise HeartbeatError(f"the body does not start with {FORMAT_LINE!r}")
    values: dict[str, str | int] = {}
    for line in lines[1:]:
        key, colon, raw = line.partition(": ")
        if not colon and line.endswith(":"):
            key, colon, raw = line[:-1], ":", ""
        if not colon or key not in KEYS:
            raise HeartbeatError(f"unknown line {line[:80]!r}")
        if key in values:
            raise HeartbeatError(f"{key} is given twice")
        values[key] = _value(key, raw)
    missing = [key for key in KEYS if key not in values]
    if missing:
        raise HeartbeatError(f"missing {', '.join(missing)}")
    return Heartbeat(**values)  # type: ignore[arg-type]


def compose_body(heartbeat: Heartbeat) -> str:
    """The body the sender writes (the sender is sh; this is its specification, and the tests')."""
    fields = asdict(heartbeat)
    return "".join([FORMAT_LINE + "\n", *(f"{key}: {fields[key]}\n" for key in KEYS)])


@dataclass(frozen=True)
class Received:
    """A heartbeat as the relay got it: the name it is recorded under, and who vouched for it."""

    heartbeat: Heartbeat
    host: str
    authenticated_by: str  # "certificate" (relay.node_pins) or "local" (mynetworks, the relay itself)


def parse_message(data: bytes) -> Received:
    """A whole message as pipe(8) gives it: headers, a blank line, the heartbeat body."""
    if len(data) > MAX_HEARTBEAT_BYTES:
        raise HeartbeatError(f"larger than {MAX_HEARTBEAT_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HeartbeatError("not UTF-8") from None
    text = text.replace("\r\n", "\n")
    header, blank, body = text.partition("\n\n")
    if not blank:
        raise HeartbeatError("no blank line after the header section")
    heartbeat = parse_body(body)
    certified = certified_node(header)
    if certified is None:
        return Received(heartbeat, heartbeat.host, "local")
    return Received(heartbeat, host_name(certified), "certificate")


def certified_node(header: str) -> str | None:
    """The node name the relay prepended, from the headers above the first Received: header only."""
    for line in header.split("\n"):
        name, _, value = line.partition(":")
        if name.lower() == "received":
            return None
        if name.lower() == NODE_HEADER.lower():
            return value.strip()
    return None


# -- the relay's record: one JSON file per host ------------------------------


@dataclass(frozen=True)
class Record:
    """The latest heartbeat of one host, and when the relay got it."""

    heartbeat: Heartbeat
    host: str
    authenticated_by: str
    received: str  # ISO 8601 UTC, the relay's clock


def _record_from_json(data: object) -> Record:
    if not isinstance(data, dict):
        raise HeartbeatError("not an object")
    heartbeat = data.get("heartbeat")
    if not isinstance(heartbeat, dict) or set(heartbeat) != set(KEYS):
        raise HeartbeatError("no heartbeat")
    for key in KEYS:
        _value(key, str(heartbeat[key]))
    host, by, received = data.get("host"), data.get("authenticated_by"), data.get("received")
    if not isinstance(host, str) or not isinstance(by, str) or not isinstance(received, str):
        raise HeartbeatError("not a record")
    parse_time(received)
    return Record(Heartbeat(**heartbeat), host_name(host), by, received)


class StateStore:
    """`directory/HOST.json` per host, each written whole (a temporary file renamed over it)."""

    def __init__(self, directory: Path, max_hosts: int = MAX_HOSTS) -> None:
        self.directory = directory
        self.max_hosts = max_hosts

    def path(self, host: str) -> Path:
        return self.directory / f"{host_name(host)}.json"

    def hosts(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        names = (p.name[: -len(".json")] for p in self.directory.iterdir() if p.name.endswith(".json"))
        return sorted(name for name in names if _HOST_RE.fullmatch(name))

    def load(self, host: str) -> Record | None:
        try:
            return _record_from_json(json.loads(self.path(host).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as error:
            raise HeartbeatError(f"the record of {host} cannot be read: {error}") from None

    def records(self) -> list[Record]:
        """Every readable record (an unreadable one is skipped: the host shows as never heard)."""
        result = []
        for host in self.hosts():
            with contextlib.suppress(HeartbeatError):
                record = self.load(host)
                if record is not None:
                    result.append(record)
        return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Opened for reading: a lock file root made (--forget) stays usable by the receiver's user.
        descriptor = os.open(self.directory / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def store(self, received: Received, now: float) -> Record:
        """Record a heartbeat unless it is not newer than the recorded one, or one host too many."""
        heartbeat = received.heartbeat
        if heartbeat.timestamp > now + MAX_CLOCK_AHEAD_SECONDS:
            raise HeartbeatError(f"made at {heartbeat.time}, more than a day ahead of the relay's clock")
        with self._locked():
            try:
                previous = self.load(received.host)
            except HeartbeatError:
                previous = None  # a damaged record is replaced
            if previous is not None and heartbeat.timestamp <= previous.heartbeat.timestamp:
                raise HeartbeatError(
                    f"replayed or out of order: made at {heartbeat.time}, "
                    f"not after the recorded {previous.heartbeat.time}"
                )
            if previous is None and not self.path(received.host).exists() and len(self.hosts()) >= self.max_hosts:
                raise HeartbeatError(f"{self.max_hosts} hosts are recorded already: {received.host} is not added")
            record = Record(heartbeat, received.host, received.authenticated_by, format_time(now))
            write_atomically(self.path(received.host), json.dumps(asdict(record), indent=1, sort_keys=True) + "\n")
            return record

    def forget(self, host: str) -> bool:
        with self._locked():
            try:
                self.path(host).unlink()
            except FileNotFoundError:
                return False
            return True


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a temporary file beside `path`, flush it to disk, rename it over `path`."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


# -- the fleet's states -------------------------------------------------------

STATES = ("ok", "late", "queue", "behind")


@dataclass(frozen=True)
class Thresholds:
    late_after_seconds: int
    queue_after_seconds: int
    expect_version: str | None = None


@dataclass(frozen=True)
class HostState:
    """One line of `oignons-mail fleet`."""

    host: str
    version: str | None
    last_heard: str | None  # ISO 8601 UTC
    age_seconds: int | None
    deferred: int | None
    oldest_deferred_seconds: int | None
    state: str  # the first of late, queue, behind that holds; else ok
    problems: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        return data


def classify(record: Record | None, host: str, thresholds: Thresholds, now: float) -> HostState:
    if record is None:
        return HostState(host, None, None, None, None, None, "late", ("late",))
    heartbeat = record.heartbeat
    heard = parse_time(record.received)
    age = max(0, int(now - heard))
    problems = []
    if age > thresholds.late_after_seconds:
        problems.append("late")
    if heartbeat.deferred and heartbeat.oldest_deferred_seconds > thresholds.queue_after_seconds:
        problems.append("queue")
    if thresholds.expect_version is not None and version_compare(heartbeat.version, thresholds.expect_version) < 0:
        problems.append("behind")
    return HostState(
        host=host,
        version=heartbeat.version,
        last_heard=record.received,
        age_seconds=age,
        deferred=heartbeat.deferred,
        oldest_deferred_seconds=heartbeat.oldest_deferred_seconds,
        state=problems[0] if problems else "ok",
        problems=tuple(problems),
    )


def fleet_states(
    records: Iterable[Record], expected_hosts: Iterable[str], thresholds: Thresholds, now: float
) -> list[HostState]:
    """Every recorded host and every host the site names, sorted by name."""
    by_host = {record.host: record for record in records}
    hosts = sorted({*by_host, *expected_hosts})
    return [classify(by_host.get(host), host, thresholds, now) for host in hosts]


def duration_text(seconds: int | None) -> str:
    """A short age: 45s, 12m, 5h07m, 2d03h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def fleet_line(state: HostState) -> str:
    heard = "never" if state.last_heard is None else f"{state.last_heard} ({duration_text(state.age_seconds)} ago)"
    queue = "-" if state.deferred is None else f"{state.deferred} deferred"
    if state.deferred:
        queue += f", oldest {duration_text(state.oldest_deferred_seconds)}"
    return f"{state.host:<16} {state.version or '-':<12} {heard:<36} {queue:<24} {state.state}"


# -- Debian version order (dpkg's), for --expect-version ---------------------


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        start_i, start_j = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        first_diff = int(a[start_i:i] or 0) - int(b[start_j:j] or 0)
        if first_diff:
            return first_diff
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def version_compare(a: str, b: str) -> int:
    """<0, 0, >0 as dpkg --compare-versions orders a and b."""
    epoch_a, upstream_a, revision_a = _split_version(a)
    epoch_b, upstream_b, revision_b = _split_version(b)
    if epoch_a != epoch_b:
        return epoch_a - epoch_b
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)


# -- reports: only what changed -----------------------------------------------


def snapshot(states: Sequence[HostState], failing_checks: Iterable[str]) -> dict[str, object]:
    """What the report compares from one run to the next."""
    return {
        "hosts": {s.host: {"state": s.state, "version": s.version} for s in states},
        "failing": sorted(failing_checks),
    }


def report_changes(previous: Mapping[str, object] | None, current: Mapping[str, object]) -> list[str]:
    """One line per change since the last report; none the first time for hosts that are ok."""
    old_hosts = _hosts_of(previous)
    new_hosts = _hosts_of(current)
    lines = []
    for host in sorted({*old_hosts, *new_hosts}):
        old, new = old_hosts.get(host), new_hosts.get(host)
        if new is None:
            lines.append(f"{host}: no longer recorded (forgotten)")
            continue
        old_state = None if old is None else old.get("state")
        if old_state != new["state"] and not (old is None and new["state"] == "ok"):
            if new["state"] == "ok":
                lines.append(f"{host}: recovered (was {old_state})")
            else:
                lines.append(f"{host}: became {new['state']}" + (f" (was {old_state})" if old_state else ""))
        old_version = None if old is None else old.get("version")
        if old_version is not None and new["version"] is not None and old_version != new["version"]:
            lines.append(f"{host}: version {old_version} -> {new['version']}")
    old_failing = set(_failing_of(previous))
    new_failing = set(_failing_of(current))
    lines += [f"status check {name}: started failing" for name in sorted(new_failing - old_failing)]
    lines += [f"status check {name}: no longer failing" for name in sorted(old_failing - new_failing)]
    return lines


def _hosts_of(snapshot_data: Mapping[str, object] | None) -> dict[str, dict[str, str | None]]:
    hosts = {} if snapshot_data is None else snapshot_data.get("hosts", {})
    return dict(hosts) if isinstance(hosts, dict) else {}


def _failing_of(snapshot_data: Mapping[str, object] | None) -> list[str]:
    failing = [] if snapshot_data is None else snapshot_data.get("failing", [])
    return [str(name) for name in failing] if isinstance(failing, list) else []


# -- Prometheus text format -----------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    samples: tuple[tuple[Mapping[str, str], float], ...]  # (labels, value)


def prometheus_text(metrics: Iterable[Metric]) -> str:
    """The text exposition format (gauges), as node-exporter's textfile collector reads it."""
    lines = []
    for metric in metrics:
        lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} gauge"]
        for labels, value in metric.samples:
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
            number = str(int(value)) if float(value).is_integer() else repr(float(value))
            lines.append(f"{metric.name}{{{label_text}}} {number}" if label_text else f"{metric.name} {number}")
    return "\n".join(lines) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fleet_metrics(states: Sequence[HostState]) -> list[Metric]:
    counts = {state: sum(1 for s in states if s.state == state) for state in STATES}
    return [
        Metric(
            "oignons_mail_fleet_hosts",
            "Hosts of the fleet by state (oignons-mail fleet).",
            tuple(({"state": state}, float(count)) for state, count in counts.items()),
        ),
        Metric(
            "oignons_mail_fleet_last_heard_timestamp_seconds",
            "When the relay last got a heartbeat from each host.",
            tuple(({"host": s.host}, parse_time(s.last_heard)) for s in states if s.last_heard is not None),
        ),
    ]


def write_metrics(metrics: Iterable[Metric], directory: Path | None = None) -> bool:
    """Write the metrics file atomically, when node-exporter's directory exists."""
    directory = Path(PROMETHEUS_DIRECTORY) if directory is None else directory
    if not directory.is_dir():
        return False
    write_atomically(directory / FLEET_PROMETHEUS_FILE, prometheus_text(metrics))
    return True


# -- what the sender (sh) reads --------------------------------------------------


def sender_config(heartbeat_address: str) -> str:
    """`/usr/share/oignons-mail-<role>/heartbeat.conf`: shell assignments, sourced by the sender."""
    values = {
        "HEARTBEAT_ADDRESS": heartbeat_address,
        "HEARTBEAT_SUBJECT": HEARTBEAT_SUBJECT,
        "HEARTBEAT_FORMAT_LINE": FORMAT_LINE,
        "HEARTBEAT_MAX_REASON_CHARS": str(MAX_REASON_CHARS),
        "PROMETHEUS_DIRECTORY": PROMETHEUS_DIRECTORY,
        "PROMETHEUS_FILE": PROMETHEUS_FILE,
    }
    lines = ["# oignons-mail heartbeat: the sender's settings (rendered from oignons_mail/health.py)."]
    lines += [f"{key}='{value}'" for key, value in values.items()]
    return "\n".join(lines) + "\n"


# -- the relay's pipe(8) receiver ------------------------------------------------


def _log(message: str) -> None:
    """One line to syslog (pipe(8) discards what a successful command prints) and stderr, escaped."""
    safe = message.encode("ascii", "backslashreplace").decode("ascii")
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in safe)[:500]
    syslog.openlog(LOG_TAG, syslog.LOG_PID, syslog.LOG_MAIL)
    syslog.syslog(syslog.LOG_INFO, safe)
    print(f"{LOG_TAG}: {safe}", file=sys.stderr)


def receive(data: bytes, store: StateStore, now: float) -> str:
    """Parse and record one message; the log line that says what happened."""
    try:
        received = parse_message(data)
        record = store.store(received, now)
    except HeartbeatError as error:
        return f"dropped: {error}"
    return f"recorded {record.host} ({record.authenticated_by}), version {record.heartbeat.version}"


def receiver_main(argv: Sequence[str] | None = None) -> int:
    """pipe(8) entry point: read at most the size limit (the rest is drained), record, exit 0."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    directory = Path(arguments[arguments.index("--state") + 1]) if "--state" in arguments else Path(STATE_DIRECTORY)
    stream = sys.stdin.buffer
    data = stream.read(MAX_HEARTBEAT_BYTES + 1)
    while stream.read(65536):
        pass
    try:
        line = receive(data, StateStore(directory), datetime.now(UTC).timestamp())
    except Exception as error:  # never a bounce, never a deferral loop: log and drop
        line = f"dropped: {type(error).__name__}: {error}"
    _log(line)
    return 0


if __name__ == "__main__":
    sys.exit(receiver_main())
