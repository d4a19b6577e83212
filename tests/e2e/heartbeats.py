"""Heartbeats on booted systems: send one, read what the relay recorded (test_health, test_fleet)."""

from __future__ import annotations

import json
from typing import Any

from oignons_mail import health
from tests.e2e.machines import Container, wait_until

HEARTBEAT_WAIT = 120.0


def record_of(relay: Container, host: str) -> str:
    """The relay's record of a host, as stored (empty when it has none)."""
    return relay.run(f"cat {health.STATE_DIRECTORY}/{host}.json").stdout


def send_heartbeat(container: Container) -> None:
    """One heartbeat at once, as the administrator sends one: start the timer's service."""
    container.check("systemctl start oignons-mail-heartbeat.service", timeout=60)


def wait_for_new_record(relay: Container, host: str, before: str) -> dict[str, Any]:
    """The host's record once it differs from `before`, parsed."""

    def changed() -> dict[str, Any] | None:
        text = record_of(relay, host)
        return json.loads(text) if text and text != before else None

    return wait_until(f"a new heartbeat record of {host} on the relay", changed, HEARTBEAT_WAIT)


def heartbeats_recorded(relay: Container, senders: dict[str, Container]) -> dict[str, dict[str, Any]]:
    """Each sender (recorded name: its system) sends a heartbeat; their new records on the relay."""
    before = {host: record_of(relay, host) for host in senders}
    for container in senders.values():
        send_heartbeat(container)
    return {host: wait_for_new_record(relay, host, before[host]) for host in senders}
