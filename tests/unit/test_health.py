"""Fleet health (src/oignons_mail/health.py): the heartbeat format, the state store, states, reports, metrics."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from oignons_mail import health
from oignons_mail.health import Heartbeat, HeartbeatError, StateStore, Thresholds

NOW = health.parse_time("2026-12-01T12:00:00Z")
GOOD = Heartbeat(
    host="marcuse",
    version="0.2.0",
    postfix="3.7.11",
    active=0,
    deferred=2,
    hold=0,
    oldest_deferred_seconds=600,
    queue_free_bytes=123456789,
    deferral_reason="Server certificate not verified",
    time="2026-12-01T11:59:00Z",
)
REPO = Path(__file__).resolve().parents[2]


def message(body: str, headers: str = "Received: from marcuse (localhost)\nSubject: x\n") -> bytes:
    return (headers + "\n" + body).encode("utf-8")


def test_compose_then_parse_round_trip() -> None:
    body = health.compose_body(GOOD)
    assert body.splitlines()[0] == health.FORMAT_LINE
    assert "deferral_reason: Server certificate not verified" in body.splitlines()
    assert health.parse_body(body) == GOOD
    assert health.parse_body(body.replace("\n", "\r\n")) == GOOD


def test_empty_reason_allowed() -> None:
    body = health.compose_body(dataclasses.replace(GOOD, deferral_reason=""))
    assert "deferral_reason:\n" in body or "deferral_reason: \n" in body
    assert health.parse_body(body).deferral_reason == ""


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda b: b.replace(health.FORMAT_LINE, "oignons-mail-heartbeat: 2"), "does not start"),
        (lambda b: b + "colour: blue\n", "unknown line"),
        (lambda b: b + "deferred: 3\n", "given twice"),
        (lambda b: b.replace("hold: 0\n", ""), "missing hold"),
        (lambda b: b.replace("deferred: 2", "deferred: -2"), "not a whole number"),
        (lambda b: b.replace("deferred: 2", "deferred: \uff12"), "not a whole number"),
        (lambda b: b.replace("deferred: 2", "deferred: " + "9" * 40), "not a whole number"),
        (lambda b: b.replace("host: marcuse", "host: ../../etc/passwd"), "not a host name"),
        (lambda b: b.replace("host: marcuse", "host: Marcuse"), "not a host name"),
        (lambda b: b.replace("host: marcuse", "host: -marcuse"), "not a host name"),
        (lambda b: b.replace("host: marcuse", "host: " + "a" * 64), "not a host name"),
        (lambda b: b.replace("version: 0.2.0", "version: 0.2 0"), "not a version"),
        (lambda b: b.replace("2026-12-01T11:59:00Z", "2026-13-01T11:59:00Z"), "not a date"),
        (lambda b: b.replace("2026-12-01T11:59:00Z", "yesterday"), "not ISO 8601"),
        (lambda b: b.replace("not verified", "not\x1bverified"), "not printable"),
        (lambda b: b.replace("not verified", "x" * 400), "longer than"),
    ],
)
def test_malformed_bodies_refused(edit: object, reason: str) -> None:
    body = edit(health.compose_body(GOOD))  # type: ignore[operator]
    with pytest.raises(HeartbeatError, match=reason):
        health.parse_body(body)


def test_message_limits() -> None:
    body = health.compose_body(GOOD)
    assert health.parse_message(message(body)).host == "marcuse"
    with pytest.raises(HeartbeatError, match="larger than"):
        health.parse_message(message(body) + b"x" * health.MAX_HEARTBEAT_BYTES)
    with pytest.raises(HeartbeatError, match="not UTF-8"):
        health.parse_message(message(body).replace(b"marcuse", b"marc\xffuse"))
    with pytest.raises(HeartbeatError, match="no blank line"):
        health.parse_message(b"Subject: heartbeat")


def test_host_from_the_relays_header_above_received_only() -> None:
    body = health.compose_body(dataclasses.replace(GOOD, host="ekumen"))
    # The relay's PREPEND is above its Received: header: it wins over the body.
    by_relay = f"Return-Path: <root@marcuse>\n{health.NODE_HEADER}: marcuse\nReceived: from marcuse\n"
    received = health.parse_message(message(body, by_relay))
    assert (received.host, received.authenticated_by) == ("marcuse", "certificate")
    # A copy the client wrote itself comes below the relay's Received: ignored.
    forged = f"Received: from marcuse\n{health.NODE_HEADER}: bulbe\n"
    received = health.parse_message(message(body, forged))
    assert (received.host, received.authenticated_by) == ("ekumen", "local")
    # A header naming no host name is refused, not recorded under a made-up name.
    with pytest.raises(HeartbeatError, match="not a host name"):
        health.parse_message(message(body, f"{health.NODE_HEADER}: ../x\nReceived: x\n"))


def store_one(store: StateStore, heartbeat: Heartbeat, now: float = NOW) -> health.Record:
    return store.store(health.Received(heartbeat, heartbeat.host, "local"), now)


def test_store_records_latest_and_refuses_replays(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store_one(store, GOOD)
    recorded = (tmp_path / "marcuse.json").read_bytes()
    for old in (GOOD, dataclasses.replace(GOOD, time="2026-12-01T11:00:00Z", deferred=0)):
        with pytest.raises(HeartbeatError, match="replayed"):
            store_one(store, old)
        assert (tmp_path / "marcuse.json").read_bytes() == recorded
    newer = dataclasses.replace(GOOD, time="2026-12-01T12:00:00Z", deferred=0)
    assert store_one(store, newer).heartbeat == newer
    assert store.load("marcuse") is not None
    assert store.load("marcuse").heartbeat == newer  # type: ignore[union-attr]
    # Nothing but the record and the lock remains (the temporary file was renamed).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "marcuse.json"]


def test_store_refuses_far_future_and_bounds_hosts(tmp_path: Path) -> None:
    store = StateStore(tmp_path, max_hosts=2)
    with pytest.raises(HeartbeatError, match="ahead"):
        store_one(store, dataclasses.replace(GOOD, time="2027-01-01T00:00:00Z"))
    store_one(store, dataclasses.replace(GOOD, host="a"))
    store_one(store, dataclasses.replace(GOOD, host="b"))
    with pytest.raises(HeartbeatError, match="2 hosts are recorded"):
        store_one(store, dataclasses.replace(GOOD, host="c"))
    assert store.hosts() == ["a", "b"]
    # A recorded host still updates.
    store_one(store, dataclasses.replace(GOOD, host="a", time="2026-12-01T11:59:30Z"))
    assert store.forget("a")
    assert not store.forget("a")
    assert store.hosts() == ["b"]


def test_damaged_record_is_skipped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "marcuse.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "ekumen.json").write_text(json.dumps({"heartbeat": {"host": "x"}}), encoding="utf-8")
    assert store.records() == []
    store_one(store, GOOD)  # a damaged record is replaced by a good heartbeat
    assert [r.host for r in store.records()] == ["marcuse"]


def test_receiver_drops_hostile_input_with_exit_0(tmp_path: Path) -> None:
    state = tmp_path / "state"
    good = message(health.compose_body(GOOD))
    cases = [
        good,
        good,  # the same again: a replay
        b"\xff\xfe" * 100,
        b"x" * (3 * health.MAX_HEARTBEAT_BYTES),
        message(health.compose_body(GOOD).replace("host: marcuse", "host: a/b")),
        message(health.compose_body(GOOD) + "extra: 1\n"),
    ]
    logs = []
    for data in cases:
        done = subprocess.run(
            [sys.executable, "-P", str(REPO / "src/oignons_mail/health.py"), "--state", str(state)],
            input=data,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        logs.append(done.stderr.decode())
    assert "recorded marcuse (local), version 0.2.0" in logs[0]
    assert all("dropped:" in line for line in logs[1:]), logs
    assert [r.heartbeat for r in StateStore(state).records()] == [GOOD]


def test_receiver_in_process_survives_unexpected_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("", encoding="utf-8")
    stdin = io.TextIOWrapper(io.BytesIO(message(health.compose_body(GOOD))))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert health.receiver_main(["--state", str(not_a_directory)]) == 0


THRESHOLDS = Thresholds(late_after_seconds=36 * 3600, queue_after_seconds=4 * 3600)


def record(heartbeat: Heartbeat, received: str = "2026-12-01T11:59:01Z") -> health.Record:
    return health.Record(heartbeat, heartbeat.host, "local", received)


def test_states() -> None:
    ok = health.classify(record(GOOD), "marcuse", THRESHOLDS, NOW)
    assert (ok.state, ok.age_seconds, ok.deferred) == ("ok", 59, 2)
    late = health.classify(record(GOOD, "2026-11-29T12:00:00Z"), "marcuse", THRESHOLDS, NOW)
    assert late.state == "late"
    stuck = dataclasses.replace(GOOD, oldest_deferred_seconds=5 * 3600)
    assert health.classify(record(stuck), "marcuse", THRESHOLDS, NOW).state == "queue"
    behind = dataclasses.replace(THRESHOLDS, expect_version="0.10.0")
    assert health.classify(record(GOOD), "marcuse", behind, NOW).state == "behind"
    ahead = dataclasses.replace(THRESHOLDS, expect_version="0.2.0~rc1")
    assert health.classify(record(GOOD), "marcuse", ahead, NOW).state == "ok"
    never = health.fleet_states([record(GOOD)], ["ekumen", "marcuse"], THRESHOLDS, NOW)
    assert [(s.host, s.state, s.last_heard) for s in never] == [
        ("ekumen", "late", None),
        ("marcuse", "ok", "2026-12-01T11:59:01Z"),
    ]
    assert health.fleet_line(never[0]).split() == ["ekumen", "-", "never", "-", "late"]
    assert health.fleet_line(never[1]).split() == [
        "marcuse", "0.2.0", "2026-12-01T11:59:01Z", "(59s", "ago)", "2", "deferred,", "oldest", "10m", "ok",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("0.2.0", "0.10.0", -1),
        ("1.0", "1.0", 0),
        ("1.0~rc1", "1.0", -1),
        ("1:0.1", "2.0", 1),
        ("1.0-1", "1.0-2", -1),
        ("1.0a", "1.0", 1),
        ("1.0+b1", "1.0", 1),
        ("0.2.0", "0.2", 1),
    ],
)
def test_version_compare_as_dpkg(a: str, b: str, sign: int) -> None:
    result = health.version_compare(a, b)
    assert (result > 0) - (result < 0) == sign


def test_report_only_changes() -> None:
    ok = {"hosts": {"marcuse": {"state": "ok", "version": "0.2.0"}}, "failing": []}
    assert health.report_changes(None, ok) == []
    assert health.report_changes(ok, ok) == []
    late = {"hosts": {"marcuse": {"state": "late", "version": "0.2.0"}}, "failing": ["postfix"]}
    assert health.report_changes(ok, late) == ["marcuse: became late (was ok)", "status check postfix: started failing"]
    upgraded = {"hosts": {"marcuse": {"state": "ok", "version": "0.3.0"}}, "failing": []}
    assert health.report_changes(late, upgraded) == [
        "marcuse: recovered (was late)",
        "marcuse: version 0.2.0 -> 0.3.0",
        "status check postfix: no longer failing",
    ]
    assert health.report_changes(None, {"hosts": {"ekumen": {"state": "late", "version": None}}}) == [
        "ekumen: became late"
    ]


def test_prometheus_text() -> None:
    states = health.fleet_states([record(GOOD)], ["ekumen"], THRESHOLDS, NOW)
    text = health.prometheus_text(health.fleet_metrics(states))
    assert 'oignons_mail_fleet_hosts{state="late"} 1\n' in text
    assert 'oignons_mail_fleet_hosts{state="ok"} 1\n' in text
    assert "# TYPE oignons_mail_fleet_hosts gauge\n" in text
    assert 'oignons_mail_fleet_last_heard_timestamp_seconds{host="marcuse"} 1796126341\n' in text
    escaped = health.prometheus_text([health.Metric("m", "h", (({"a": 'x"\\\n'}, 1.5),))])
    assert escaped.endswith('m{a="x\\"\\\\\\n"} 1.5\n')


def test_write_metrics_only_where_node_exporter_is(tmp_path: Path) -> None:
    assert not health.write_metrics([], tmp_path / "missing")
    assert health.write_metrics(health.fleet_metrics([]), tmp_path)
    assert (tmp_path / health.FLEET_PROMETHEUS_FILE).read_text(encoding="utf-8").startswith("# HELP")


def test_sender_config_is_shell() -> None:
    text = health.sender_config("heartbeat@nos-oignons.net")
    done = subprocess.run(
        ["sh", "-c", '. /dev/stdin; echo "$HEARTBEAT_ADDRESS|$HEARTBEAT_FORMAT_LINE"'],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == f"heartbeat@nos-oignons.net|{health.FORMAT_LINE}\n"
