"""`oignons-mail fleet` and `oignons-mail status` (health_cli.py, status.py) on fixture trees and fake commands."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from tests.unit.test_health import GOOD, REPO
from tests.unit.test_pin import make_certificate

from oignons_mail import dns, health, health_cli, pin, site, status
from oignons_mail.cli import main

NOW = health.parse_time("2026-12-01T12:00:00Z")
DEFERRED = json.dumps(
    {
        "queue_name": "deferred",
        "arrival_time": int(NOW) - 7200,
        "recipients": [{"address": "machines@nos-oignons.net", "delay_reason": "Server certificate not verified"}],
    }
)
ACTIVE = json.dumps({"queue_name": "active", "arrival_time": int(NOW) - 5, "recipients": [{"address": "x@y.z"}]})


def test_postqueue_json() -> None:
    queue = status.parse_postqueue_json("\n".join([DEFERRED, ACTIVE, "not json", "[]"]), NOW)
    assert queue == status.Queue(1, 1, 0, 7200, "Server certificate not verified")
    assert status.parse_postqueue_json("", NOW) == status.Queue(0, 0, 0, 0, "")


def fake_node(tmp_path: Path, outputs: dict[str, tuple[int, str]]) -> status.Host:
    for name, text in (
        ("usr/share/oignons-mail-smarthost/main.cf", "# shipped\nmydomain = nos-oignons.net\n"),
        ("var/lib/oignons-mail-smarthost/main.cf.applied", "mydomain = nos-oignons.net\nmyhostname = marcuse\n"),
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    defaults = {
        "postfix status": (0, ""),
        "dpkg-query": (0, "ii  0.2.0"),
        "postconf -n": (0, "mydomain = nos-oignons.net\nmyhostname = marcuse\n"),
        "postqueue -j": (0, DEFERRED + "\n"),
        "postconf -hx": (0, "bulbe.nos-oignons.net\nsha256\naa:bb\n"),
    }
    defaults.update(outputs)

    def run(argv: Sequence[str]) -> tuple[int, str]:
        for prefix, result in defaults.items():
            if " ".join(argv).startswith(prefix):
                return result
        raise AssertionError(f"unexpected command {argv}")

    return status.Host(root=tmp_path, run=run)


def test_node_whose_relay_key_is_not_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certificate = pin.certificate_from_file(make_certificate(tmp_path, "ec"))
    monkeypatch.setattr(pin, "certificate_from_server", lambda host, port, timeout: certificate)
    found = {c.name: c for c in status.checks(fake_node(tmp_path, {}), NOW)}
    assert [c.level for c in found.values()] == ["ok", "ok", "ok", "fail"]
    assert found["applied"].detail == "oignons-mail-smarthost 0.2.0"
    assert found["relay-pin"].detail.startswith("bulbe.nos-oignons.net presents key ")
    assert found["relay-pin"].detail.endswith("which no pin matches; the queue says: Server certificate not verified")
    assert found["queue"].detail == (
        "0 active, 1 deferred, 0 hold, oldest deferred 2h00m (Server certificate not verified)"
    )
    # The same key pinned: ok.
    key_pin = pin.pins(pin.subject_public_key_info(certificate))["sha256"]
    pinned = fake_node(tmp_path, {"postconf -hx": (0, f"bulbe.nos-oignons.net\nsha256\n{key_pin}\n")})
    assert status.check_relay_pin(pinned, None).level == "ok"


def test_node_checks_that_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(host: str, port: int, timeout: float) -> bytes:
        raise pin.PinError(f"{host}:{port}: no certificate: refused")

    monkeypatch.setattr(pin, "certificate_from_server", unreachable)
    node = fake_node(
        tmp_path,
        {
            "postfix status": (1, "postfix/postfix-script: the Postfix mail system is not running\n"),
            "dpkg-query": (0, "iF 0.2.0"),
            "postqueue -j": (75, "postqueue: fatal: Queue report unavailable - mail system is down\n"),
        },
    )
    found = {c.name: c for c in status.checks(node, NOW)}
    assert found["postfix"] == status.Check(
        "fail", "postfix", "postfix/postfix-script: the Postfix mail system is not running"
    )
    assert found["applied"].level == "fail"
    assert "dpkg --configure -a" in found["applied"].detail
    assert found["queue"] == status.Check(
        "fail", "queue", "postqueue: fatal: Queue report unavailable - mail system is down"
    )
    assert found["relay-pin"].level == "warn"
    assert status.failing(list(found.values())) == ["postfix", "applied", "queue"]


def test_status_json_and_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = status.Host(root=tmp_path / "empty")
    monkeypatch.setattr(status, "Host", lambda: empty)
    assert main(["status", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {
            "level": "fail",
            "name": "package",
            "detail": "neither oignons-mail-relay nor oignons-mail-smarthost is installed",
        }
    ]


def fleet_args(tmp_path: Path) -> list[str]:
    config = tmp_path / "fleet.json"
    if not config.exists():
        config.write_text(
            json.dumps({"late_after_seconds": 3600, "queue_after_seconds": 14400, "nodes": ["ekumen", "marcuse"]}),
            encoding="utf-8",
        )
    return ["--state", str(tmp_path / "state"), "--config", str(config), "--report-state", str(tmp_path / "report")]


def record_now(tmp_path: Path, heartbeat: health.Heartbeat) -> None:
    now = health.parse_time(heartbeat.time) + 1
    health.StateStore(tmp_path / "state").store(health.Received(heartbeat, heartbeat.host, "local"), now)


def test_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    heard = health.format_time(time.time() - 10)
    record_now(tmp_path, dataclasses.replace(GOOD, time=heard, deferred=0, oldest_deferred_seconds=0))
    assert main(["fleet", "--json", *fleet_args(tmp_path)]) == 1  # ekumen never heard from: late
    hosts = {h["host"]: h for h in json.loads(capsys.readouterr().out)}
    assert hosts["ekumen"]["state"] == "late"
    assert hosts["ekumen"]["last_heard"] is None
    assert {k: hosts["marcuse"][k] for k in ("version", "state", "deferred", "oldest_deferred_seconds")} == {
        "version": "0.2.0",
        "state": "ok",
        "deferred": 0,
        "oldest_deferred_seconds": 0,
    }
    assert hosts["marcuse"]["last_heard"].endswith("Z")
    assert main(["fleet", "--expect-version", "0.3.0", *fleet_args(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HOST", "VERSION", "LAST", "HEARD", "(UTC)", "QUEUE", "STATE"]
    assert lines[2].split()[0] == "marcuse"
    assert lines[2].split()[-1] == "behind"
    assert main(["fleet", "--forget", "ekumen", *fleet_args(tmp_path)]) == 1  # not recorded, only expected
    assert capsys.readouterr().out == "ekumen: not recorded\n"
    assert main(["fleet", "--forget", "marcuse", *fleet_args(tmp_path)]) == 0
    assert capsys.readouterr().out == "forgot marcuse\n"
    assert main(["fleet", "--forget", "../etc", *fleet_args(tmp_path)]) == 2
    assert main(["fleet", "--late-after", "soon", *fleet_args(tmp_path)]) == 2
    assert "--late-after soon: not a Postfix time" in capsys.readouterr().err
    assert main(["fleet", "--expect-version", "new!", *fleet_args(tmp_path)]) == 2


def test_report_mails_only_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def send(host: str, changes: list[str], states: object, local: object) -> str:
        sent.append("\n".join(changes))
        return "id@bulbe"

    monkeypatch.setattr(health_cli, "send_report", send)
    monkeypatch.setattr(status, "checks", lambda host, now: [status.Check("ok", "postfix", "running")])
    monkeypatch.setattr(status, "postconf", lambda host, *keys: {"myhostname": "bulbe"})
    monkeypatch.setattr(health, "PROMETHEUS_DIRECTORY", str(tmp_path / "none"))
    args = ["fleet", "--report", *fleet_args(tmp_path)]
    assert main(args) == 0
    assert sent == ["ekumen: became late\nmarcuse: became late"]
    assert main(args) == 0
    assert len(sent) == 1  # nothing changed: no mail
    heard = health.format_time(time.time() - 5)
    record_now(tmp_path, dataclasses.replace(GOOD, time=heard, deferred=0))
    assert main(args) == 0
    assert sent[1] == "marcuse: recovered (was late)"


def test_report_text_names_the_host() -> None:
    states = health.fleet_states([], ["marcuse"], health.Thresholds(60, 60), NOW)
    local = [status.Check("ok", "postfix", "running")]
    text = health_cli.report_text("bulbe", ["marcuse: became late"], states, local, "r@bulbe")
    assert text.startswith("To: root\nMessage-Id: <r@bulbe>\nSubject: oignons-mail fleet: 1 change(s) seen on bulbe\n")
    assert "\n  marcuse: became late\n" in text
    assert "\n  ok   postfix running\n" in text


def test_confinement_is_that_of_the_unit_running_master(tmp_path: Path) -> None:
    drop_in = "DropInPaths=/usr/lib/systemd/system/postfix@.service.d/oignons-mail-relay.conf"
    wrapper = (
        0,
        "Type=oneshot\nActiveState=active\nDropInPaths=/usr/lib/systemd/system/postfix.service.d/oignons-mail-relay.conf\n",
    )

    def bookworm(master_drop_ins: str) -> status.Host:
        def run(argv: Sequence[str]) -> tuple[int, str]:
            return (
                wrapper
                if argv[-1] == "postfix.service"
                else (0, f"Type=forking\nActiveState=active\n{master_drop_ins}\n")
            )

        return status.Host(root=tmp_path, run=run)

    assert status.check_confinement(bookworm(drop_in)) == status.Check(
        "ok", "confinement", "postfix@-.service runs under oignons-mail-relay.conf"
    )
    assert status.check_confinement(bookworm("DropInPaths=")).level == "fail"


def installed_relay(tmp_path: Path) -> tuple[status.Host, site.Site]:
    """A relay whose installed site is the default one, its certificate absent (no TLSA), no DKIM key yet."""
    installed = tmp_path / site.INSTALLED_RELAY_SITE.lstrip("/")
    installed.parent.mkdir(parents=True)
    installed.write_text((REPO / "sites" / "nos-oignons.toml").read_text(encoding="utf-8"), encoding="utf-8")
    return status.Host(root=tmp_path), site.load_site(installed)


def published(the_site: site.Site, extra: dict[tuple[str, str], list[str]]) -> Callable[[], dns.Resolver]:
    """A resolver answering with the site's own records (what oignons-mail dns prints), plus `extra`."""
    keys, _ = dns.relay_keys(the_site, None)
    answers: dict[tuple[str, str], list[str]] = {}
    for record in dns.site_records(the_site, keys, []):
        answers.setdefault((record.name, record.type), []).append(record.value)
    for key, values in extra.items():
        answers[key] = answers.get(key, []) + values

    def lookup(name: str, record_type: str) -> list[str]:
        return list(answers.get((name, record_type), []))

    return lambda: dns.Resolver(lookup, lambda name, record_type: True)


def test_relay_dns_check(tmp_path: Path) -> None:
    host, the_site = installed_relay(tmp_path)
    # The relay's address, forward-confirmed by its PTR.
    address = {
        ("bulbe.nos-oignons.net.", "A"): ["192.0.2.25"],
        ("25.2.0.192.in-addr.arpa.", "PTR"): ["bulbe.nos-oignons.net."],
    }
    fine = status.check_dns(host, published(the_site, address))
    assert fine.level == "ok", fine
    spf = ("nos-oignons.net.", "TXT")
    second = status.check_dns(host, published(the_site, address | {spf: ["v=spf1 a -all"]}))
    assert second.level == "fail", second
    assert "SPF of nos-oignons.net different" in second.detail
    nothing = status.check_dns(host, lambda: dns.Resolver(lambda name, record_type: [], lambda n, t: False))
    assert nothing.level == "warn", nothing
    assert " missing" in nothing.detail
    assert status.check_dns(status.Host(root=tmp_path / "elsewhere")).level == "warn"


def test_relay_dns_check_unanswered(tmp_path: Path) -> None:
    host, _ = installed_relay(tmp_path)

    def unanswered(name: str, record_type: str) -> list[str]:
        raise dns.DnsError(f"the system's resolver did not answer {name} {record_type}: timeout")

    found = status.check_dns(host, lambda: dns.Resolver(unanswered, lambda n, t: False))
    assert found.level == "warn"
    assert found.detail.startswith("not checked: the system's resolver did not answer "), found
