"""The responder's settings in the site ([relay.responder]) and what render() makes of them."""

from __future__ import annotations

import json

import pytest
from tests.unit.test_site import Data, data, parse_broken, set_

from oignons_mail.render import render
from oignons_mail.site import parse_site

__all__ = ["data"]  # the fixture: the real site file, parsed


def test_defaults_when_left_out(data: Data) -> None:
    for key in ("global_rate_limit", "global_rate_window", "process_limit", "time_limit"):
        data["relay"]["responder"].pop(key, None)
    responder = parse_site(data, "site.toml").relay.responder
    assert responder.global_rate_limit == 20
    assert responder.global_rate_window_seconds == 3600
    assert responder.process_limit == 4
    assert responder.time_limit_seconds == 120


def test_settings_reach_main_cf_master_cf_and_the_responder(data: Data) -> None:
    data["relay"]["responder"].update(global_rate_limit=5, global_rate_window="2h", process_limit=2, time_limit="30s")
    data["relay"]["recipient_delimiter"] = "-"
    files = render(parse_site(data, "site.toml"))
    config = json.loads(files["relay/responder.json"])
    assert config["global_rate_limit"] == 5
    assert config["global_rate_window_seconds"] == 7200
    assert config["recipient_delimiter"] == "-"
    assert config["own_domains"] == data["relay"]["destinations"]
    assert "responder_time_limit = 30s\n" in files["relay/main.cf"]
    [service] = [line for line in files["relay/master.cf"].splitlines() if line.startswith("-M responder/unix")]
    assert service.startswith("-M responder/unix = responder unix - n n - 2 pipe ")
    assert service.endswith(" --queue-id ${queue_id}")


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("global_rate_limit", 0, "at least 1"),
        ("global_rate_limit", "20", "must be a whole number"),
        ("global_rate_window", "0s", "at least one second"),
        ("global_rate_window", "an hour", "not a Postfix time"),
        ("process_limit", 0, "at least 1"),
        ("time_limit", "2 minutes", "not a Postfix time"),
    ],
)
def test_bad_values_are_refused(data: Data, key: str, value: object, rule: str) -> None:
    error = parse_broken(data, set_("relay", "responder", key, value))
    assert error.key == f"relay.responder.{key}"
    assert rule in str(error)
