"""The site's [fleet] section (src/oignons_mail/site.py) and what the relay renders from it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from oignons_mail import health
from oignons_mail.errors import SiteError
from oignons_mail.render import render
from oignons_mail.site import FLEET_HEARTBEAT_LOCAL_PART, parse_site

SITE_FILE = Path(__file__).resolve().parents[2] / "tests" / "golden" / "nos-oignons" / "in" / "site.toml"


def site_data(fleet: dict[str, Any] | None = None) -> dict[str, Any]:
    with SITE_FILE.open("rb") as file:
        data = tomllib.load(file)
    if fleet is not None:
        data["fleet"] = fleet
    return data


def test_defaults() -> None:
    fleet = parse_site(site_data(), "site.toml").fleet
    assert fleet.heartbeat_address == "heartbeat@nos-oignons.net"
    assert (fleet.late_after_seconds, fleet.queue_after_seconds, fleet.nodes) == (36 * 3600, 4 * 3600, ())
    assert FLEET_HEARTBEAT_LOCAL_PART == health.HEARTBEAT_LOCAL_PART


def test_values_reach_the_relay() -> None:
    fleet = {"heartbeat_address": "pouls@nos-oignons.org", "late_after": "2d", "nodes": ["marcuse", "ekumen"]}
    files = render(parse_site(site_data(fleet), "site.toml"))
    config = json.loads(files["relay/fleet.json"])
    assert config == {
        "heartbeat_address": "pouls@nos-oignons.org",
        "late_after_seconds": 172800,
        "queue_after_seconds": 14400,
        "nodes": ["marcuse", "ekumen"],
    }
    assert "HEARTBEAT_ADDRESS='pouls@nos-oignons.org'" in files["smarthost/heartbeat.conf"].splitlines()
    assert "pouls@nos-oignons.org  heartbeat:" in files["relay/tables.d/heartbeat"]
    local_only = [line.split(None, 1) for line in files["relay/tables.d/local_only_recipients"].splitlines()]
    assert ["pouls@", "550 5.1.1 User unknown in local recipient table"] in local_only


@pytest.mark.parametrize(
    ("fleet", "key", "rule"),
    [
        ({"heartbeat_address": "heartbeat@example.org"}, "fleet.heartbeat_address", "not in a domain of relay"),
        ({"heartbeat_address": "root@nos-oignons.net"}, "fleet.heartbeat_address", "is also an alias"),
        ({"heartbeat_address": "dons@nos-oignons.net"}, "fleet.heartbeat_address", "is also a responder address"),
        ({"heartbeat_address": "machines@nos-oignons.net"}, "fleet.heartbeat_address", "Schleuder list"),
        ({"heartbeat_address": "beat+x@nos-oignons.net"}, "fleet.heartbeat_address", "recipient delimiter"),
        ({"heartbeat_address": "Heartbeat"}, "fleet.heartbeat_address", "not a mail address"),
        ({"late_after": "soon"}, "fleet.late_after", "not a Postfix time"),
        ({"queue_after": "0s"}, "fleet.queue_after", "at least one second"),
        ({"nodes": ["Marcuse"]}, "fleet.nodes[0]", "not a host name label"),
        ({"nodes": ["a", "a"]}, "fleet.nodes[1]", "listed twice"),
        ({"colour": "blue"}, "fleet.colour", "unknown key"),
    ],
)
def test_rules(fleet: dict[str, Any], key: str, rule: str) -> None:
    with pytest.raises(SiteError) as caught:
        parse_site(site_data(fleet), "site.toml")
    assert caught.value.key == key
    assert rule in caught.value.rule
