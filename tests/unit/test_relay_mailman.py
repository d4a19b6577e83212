"""relay.mailman: the relay recommends mailman3, and names Mailman lists, only for a site that has them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from oignons_mail.errors import SiteError
from oignons_mail.render import example_node_name, render_source_package
from oignons_mail.site import parse_site

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def site_data(case: str) -> dict[str, Any]:
    with (GOLDEN / case / "in" / "site.toml").open("rb") as handle:
        return tomllib.load(handle)


def relay_stanza(data: dict[str, Any]) -> str:
    control = render_source_package(parse_site(data, "site.toml"))["debian/control"]
    return control.partition("\nPackage: oignons-mail-relay\n")[2].partition("\nPackage:")[0]


def test_the_default_site_keeps_mailman() -> None:
    stanza = relay_stanza(site_data("nos-oignons"))
    assert "Recommends: mailman3,\n            oignons-mail," in stanza
    assert "            schleuder,\n" in stanza
    assert " aliases, Schleuder lists and Mailman lists, address extensions,\n" in stanza


def test_without_the_key_a_site_has_no_mailman() -> None:
    data = site_data("nos-oignons")
    del data["relay"]["mailman"]
    stanza = relay_stanza(data)
    assert "mailman3" not in stanza
    assert " aliases and Schleuder lists, address extensions,\n" in stanza


def test_mailman_must_be_a_boolean() -> None:
    data = site_data("nos-oignons")
    data["relay"]["mailman"] = "yes"
    with pytest.raises(SiteError, match=r"relay\.mailman = \"yes\": must be true or false"):
        parse_site(data, "site.toml")


def test_the_debconf_example_is_a_node_of_the_site() -> None:
    assert example_node_name(parse_site(site_data("other-site"), "site.toml")) == "navet"
    assert example_node_name(parse_site(site_data("nos-oignons"), "site.toml")) == "node1"
