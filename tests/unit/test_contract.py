"""One contract across languages: every value the Python tool, the maintainer scripts and the responder share.

The Python tool is the source (oignons_mail.postfix, oignons_mail.render);
each copy in a shell script, in debian/ or in the responder is read here and
must be equal to it.  The responder's configuration (responder.json) must be
accepted by the responder exactly when the site's rules accept the values
it comes from.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.responder_script import load_responder
from tests.unit.test_site import Data, data

from oignons_mail import postfix
from oignons_mail.errors import SiteError
from oignons_mail.render import (
    DKIM_KEY_PATH,
    RESPONDER_COMMAND,
    RESPONDER_CONFIG,
    RESPONDER_STATE,
    RESPONDER_USER,
    render,
)
from oignons_mail.site import Site, parse_site

__all__ = ["data"]  # the fixture: the real site file, parsed

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
TABLE_DIRECTORY = postfix.TABLE_DIRECTORY
LOCAL_ALIASES = f"{postfix.TABLE_DIRECTORY}/{postfix.LOCAL_ALIASES}"
DKIM_DIRECTORY = DKIM_KEY_PATH.rpartition("/")[0]
MAINTAINER_SCRIPTS = sorted(
    path.relative_to(REPO).as_posix()
    for pattern in ("debian/*.postinst", "debian/*.prerm", "debian/*.postrm", "debian/*.config", "scripts/*")
    for path in REPO.glob(pattern)
    if path.suffix != ".py"
)


def shell_values(relative: str) -> dict[str, str]:
    """The top-level NAME=VALUE assignments of a shell script, $NAME and ${NAME} expanded."""
    values: dict[str, str] = {}
    for line in (REPO / relative).read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
        if match:
            values[match[1]] = expand(match[2], values)
    return values


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Z_]+)\}?", lambda match: values.get(match[1], match[0]), text)


# (script, variable, the Python value it must equal)
SHELL_COPIES = [
    ("debian/oignons-mail-relay.postinst", "RESPONDER_USER", RESPONDER_USER),
    ("scripts/postfix-apply", "TABLES", TABLE_DIRECTORY),
    ("scripts/postfix-apply", "LOCAL_ALIASES", LOCAL_ALIASES),
    ("scripts/postfix-apply-plan", "TABLES", TABLE_DIRECTORY),
    ("debian/oignons-mail-relay.postrm", "LOCAL_ALIASES", LOCAL_ALIASES),
    ("debian/oignons-mail-smarthost.postrm", "LOCAL_ALIASES", LOCAL_ALIASES),
    ("scripts/dkim-keys", "DIRECTORY", DKIM_DIRECTORY),
]


@pytest.mark.parametrize(("script", "name", "value"), SHELL_COPIES, ids=[f"{s}:{n}" for s, n, _ in SHELL_COPIES])
def test_each_shell_copy_equals_the_python_value(script: str, name: str, value: str) -> None:
    values = shell_values(script)
    assert name in values, f"{script} no longer sets {name}: update SHELL_COPIES"
    assert values[name] == value, f"{script}: {name}={values[name]}, the tool has {value}"


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_every_spelled_out_path_in_a_script_is_the_tools(script: str) -> None:
    """A path spelled out instead of taken from a variable must still be the tool's."""
    text = (REPO / script).read_text(encoding="utf-8")
    values = shell_values(script)
    for pattern, expected in (
        (r"/etc/postfix/oignons[\w.-]*", TABLE_DIRECTORY),
        (r"/var/lib/rspamd/[\w.-]*", DKIM_DIRECTORY),
        (r"/var/lib/\$PACKAGE/responder\b", RESPONDER_STATE),
    ):
        for spelled in re.findall(pattern, text):
            assert expand(spelled, values) == expected, f"{script} spells {spelled}, the tool has {expected}"


def test_the_responders_state_and_user_are_the_ones_the_postinst_makes() -> None:
    postinst = (REPO / "debian/oignons-mail-relay.postinst").read_text(encoding="utf-8")
    values = shell_values("debian/oignons-mail-relay.postinst")
    made = [expand(path, values) for path in re.findall(r"/var/lib/\$PACKAGE/responder\b", postinst)]
    assert made != []
    assert set(made) == {RESPONDER_STATE}
    assert "adduser --system" in postinst
    assert "$RESPONDER_USER" in postinst


def test_the_responder_and_its_configuration_are_installed_where_master_cf_says() -> None:
    rules = (REPO / "debian/rules").read_text(encoding="utf-8")
    assert f"$(RELAY){RESPONDER_COMMAND}\n" in rules
    install = (REPO / "debian/oignons-mail-relay.install").read_text(encoding="utf-8").splitlines()
    directory = RESPONDER_CONFIG.rpartition("/")[0].lstrip("/")
    assert f"debian/rendered/relay/{RESPONDER_CONFIG.rpartition('/')[2]} {directory}/" in install


def rendered_tables(role: str) -> set[str]:
    names = set()
    for listing in GOLDEN.glob(f"*/out/{role}/tables"):
        for line in listing.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                names.add(line.split()[1].rpartition("/")[2])
    return names


@pytest.mark.parametrize("role", ["relay", "smarthost"])
def test_the_tables_a_purge_removes_are_the_ones_the_tool_renders(role: str) -> None:
    """The postrm names the tables a failed removal may leave: every table render makes, no other."""
    postrm = (REPO / f"debian/oignons-mail-{role}.postrm").read_text(encoding="utf-8")
    # The list may go on over lines ending in a backslash.
    loop = re.search(r"for table in ([\w \\\n]+); do\s+rm -f /etc/postfix/oignons-mail/\$table\.db", postrm)
    named = (
        set(loop[1].replace("\\", " ").split())
        if loop
        else set(re.findall(r"rm -f /etc/postfix/oignons-mail/(\w+)\.db", postrm))
    )
    rendered = rendered_tables(role)
    assert rendered != set()
    assert named == rendered


# -- the responder's configuration ------------------------------------------

responder = load_responder()
GOLDEN_CONFIGS = sorted(GOLDEN.glob("*/out/relay/responder.json"))


@pytest.mark.parametrize("path", GOLDEN_CONFIGS, ids=[path.parts[-4] for path in GOLDEN_CONFIGS])
def test_the_rendered_configuration_has_the_responders_keys_and_loads(path: Path) -> None:
    assert GOLDEN_CONFIGS != []
    assert set(json.loads(path.read_text(encoding="utf-8"))) == set(responder._CONFIG_KEYS)
    responder.load_config(path)


# The responder.json keys that are not a field of the site's Responder, and where their value comes from.
DERIVED_KEYS: dict[str, Callable[[Site], object]] = {
    "body": lambda site: site.relay.responder.text,
    "recipient_delimiter": lambda site: site.relay.recipient_delimiter,
    "own_domains": lambda site: list(site.relay.destinations),
    "state_directory": lambda site: RESPONDER_STATE,
    "smtp_host": lambda site: "127.0.0.1",
    "smtp_port": lambda site: 25,
}


def test_each_configuration_key_is_the_sites_name_for_it(data: Data) -> None:
    """No key renamed on the way: a responder.json key is the Responder field it comes from, same value."""
    site = parse_site(data, "site.toml")
    config = json.loads(render(site)["relay/responder.json"])
    fields = {field.name for field in dataclasses.fields(site.relay.responder)}
    assert set(config) - set(DERIVED_KEYS) <= fields, f"keys that are no Responder field: {set(config) - fields}"
    for key, value in config.items():
        expected = DERIVED_KEYS[key](site) if key in DERIVED_KEYS else getattr(site.relay.responder, key)
        assert value == expected, key


# (where the value is in the site, the value there, the responder.json key, the value there)
SITE_AND_RESPONDER = [
    (("relay", "responder", "rate_limit"), "1s", "rate_limit_seconds", 1),
    (("relay", "responder", "rate_limit"), "0s", "rate_limit_seconds", 0),
    (("relay", "responder", "global_rate_limit"), 1, "global_rate_limit", 1),
    (("relay", "responder", "global_rate_limit"), 0, "global_rate_limit", 0),
    (("relay", "responder", "global_rate_window"), "1s", "global_rate_window_seconds", 1),
    (("relay", "responder", "global_rate_window"), "0s", "global_rate_window_seconds", 0),
    *((("relay", "recipient_delimiter"), value, "recipient_delimiter", value) for value in "+-_=~"),
    *(
        (("relay", "recipient_delimiter"), value, "recipient_delimiter", value)
        for value in ("", "++", "-+", "a", "7", " ", "@", ".")
    ),
]


def site_config(data: Data, where: tuple[str, ...], value: object) -> dict[str, Any] | None:
    """The responder.json the tool renders with this value, or None if the site's rules refuse it."""
    changed = copy.deepcopy(data)
    node: Any = changed
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    try:
        site = parse_site(changed, "site.toml")
    except SiteError:
        return None
    config: dict[str, Any] = json.loads(render(site)["relay/responder.json"])
    return config


def responder_accepts(config: dict[str, Any], tmp_path: Path) -> bool:
    path = tmp_path / "responder.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    try:
        responder.load_config(path)
    except responder.ConfigError:
        return False
    return True


@pytest.mark.parametrize(
    ("where", "site_value", "key", "value"),
    SITE_AND_RESPONDER,
    ids=[f"{where[-1]}={site_value!r}" for where, site_value, _, _ in SITE_AND_RESPONDER],
)
def test_the_responder_accepts_a_value_exactly_when_the_site_does(
    data: Data, tmp_path: Path, where: tuple[str, ...], site_value: object, key: str, *, value: object
) -> None:
    rendered = site_config(data, where, site_value)
    if rendered is not None:
        assert rendered[key] == value
        assert responder_accepts(rendered, tmp_path), (
            f"the site accepts {where[-1]} = {site_value!r}, the responder not"
        )
    else:
        golden = json.loads(GOLDEN_CONFIGS[0].read_text(encoding="utf-8"))
        assert responder_accepts(golden, tmp_path)
        assert not responder_accepts({**golden, key: value}, tmp_path), (
            f"the site refuses {where[-1]} = {site_value!r}, the responder accepts {key} = {value!r}"
        )
