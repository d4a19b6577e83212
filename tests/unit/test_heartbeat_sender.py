"""The node's sender (scripts/heartbeat, POSIX sh) against the receiver's parser (health.py), with fake commands."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from oignons_mail import health

REPO = Path(__file__).resolve().parents[2]


def queue(now: int) -> list[dict[str, object]]:
    """`postqueue -j`'s messages, aged from `now` (taken when the test runs: collection may be long before)."""
    return [
        {"queue_name": "active", "arrival_time": now - 3, "recipients": [{"address": "a@b.c"}]},
        {
            "queue_name": "deferred",
            "arrival_time": now - 7200,
            "recipients": [{"address": "m@n.o", "delay_reason": "connect to bulbe: Connection refused"}],
        },
        {
            "queue_name": "deferred",
            "arrival_time": now - 60,
            "recipients": [{"address": "m@n.o", "delay_reason": 'Server certificate not verified "x"'}],
        },
        {"queue_name": "hold", "arrival_time": now - 5, "recipients": [{"address": "h@n.o"}]},
    ]


COMMANDS = {
    "postconf": """case "$*" in
  "-h myhostname") echo Marcuse.nos-oignons.net ;;
  "-h mail_version") echo 3.7.11 ;;
  "-h queue_directory") echo /var/spool/postfix ;;
  *) exit 1 ;;
esac""",
    "dpkg-query": "echo 0.3.0",
    "df": 'echo "Filesystem 1024-blocks Used Available Capacity Mounted"; echo "/dev/x 100 50 2048 50% /"',
    "sendmail": 'echo "$*" > "$OUT.args"; cat > "$OUT"',
}


def run_sender(tmp_path: Path, queue_lines: str, prometheus: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    commands = {**COMMANDS, "postqueue": f"cat <<'QUEUE'\n{queue_lines}QUEUE"}
    for name, body in commands.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    config = tmp_path / "heartbeat.conf"
    text = health.sender_config("heartbeat@nos-oignons.net")
    config.write_text(text.replace(health.PROMETHEUS_DIRECTORY, str(prometheus)), encoding="utf-8")
    environment = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "OUT": str(tmp_path / "message"),
        "OIGNONS_MAIL_HEARTBEAT_CONFIG": str(config),
        "OIGNONS_MAIL_SENDMAIL": str(bin_dir / "sendmail"),
    }
    return subprocess.run(
        ["sh", str(REPO / "scripts/heartbeat"), "oignons-mail-smarthost"],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        check=True,
    )


def test_the_sent_heartbeat_parses(tmp_path: Path) -> None:
    prometheus = tmp_path / "node-exporter"
    prometheus.mkdir()
    now = int(time.time())
    run_sender(tmp_path, "".join(json.dumps(m) + "\n" for m in queue(now)), prometheus)
    assert (tmp_path / "message.args").read_text(encoding="utf-8") == "-oi -f root heartbeat@nos-oignons.net\n"
    received = health.parse_message((tmp_path / "message").read_bytes())
    heartbeat = received.heartbeat
    assert (received.host, heartbeat.version, heartbeat.postfix) == ("marcuse", "0.3.0", "3.7.11")
    assert (heartbeat.active, heartbeat.deferred, heartbeat.hold) == (1, 2, 1)
    assert 7200 <= heartbeat.oldest_deferred_seconds < 7300
    assert heartbeat.deferral_reason == 'Server certificate not verified "x"'
    assert heartbeat.queue_free_bytes == 2048 * 1024
    assert abs(heartbeat.timestamp - now) < 60
    figures = (prometheus / health.PROMETHEUS_FILE).read_text(encoding="utf-8")
    assert 'oignons_mail_queue_messages{queue="deferred"} 2\n' in figures
    assert [p.name for p in prometheus.iterdir()] == [health.PROMETHEUS_FILE]


def test_empty_queue_and_no_node_exporter(tmp_path: Path) -> None:
    run_sender(tmp_path, "", tmp_path / "absent")
    heartbeat = health.parse_message((tmp_path / "message").read_bytes()).heartbeat
    assert (heartbeat.active, heartbeat.deferred, heartbeat.hold, heartbeat.oldest_deferred_seconds) == (0, 0, 0, 0)
    assert heartbeat.deferral_reason == ""
    assert not (tmp_path / "absent").exists()
