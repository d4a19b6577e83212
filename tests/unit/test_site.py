"""Site validation (src/oignons_mail/site.py): the default site's fixture loads, each rule refuses what it should.

Every broken case starts from the default site's golden fixture
(tests/golden/nos-oignons/in/site.toml, not sites/nos-oignons.toml, which an
administrator edits), changes one value
in a deep copy of the parsed TOML and checks the SiteError: the key path, the
rule, and the value as str(error) shows it.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oignons_mail import render as render_module
from oignons_mail.errors import ABSENT, SiteError
from oignons_mail.render import render
from oignons_mail.site import ClientLimits, Package, TlsPolicy, Transport, _Table, load_site, non_empty, parse_site

REPO = Path(__file__).resolve().parents[2]
SITE_FILE = REPO / "tests" / "golden" / "nos-oignons" / "in" / "site.toml"

REAL_PIN = "ac:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28"
REAL_IBAN = "FR14 2004 1010 0505 0001 3M02 606"
SHA256_PIN = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

Data = dict[str, Any]
Mutation = Callable[[Data], None]
PathPart = str | int


@pytest.fixture
def data() -> Data:
    """The parsed TOML of the default site's fixture; each test gets its own copy."""
    with SITE_FILE.open("rb") as file:
        return tomllib.load(file)


def _parent(data: Data, path: tuple[PathPart, ...]) -> Any:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    return node


def set_(*path_and_value: Any) -> Mutation:
    """A mutation that sets data[p0][p1]... = value (the last argument)."""
    *path, value = path_and_value

    def mutate(data: Data) -> None:
        _parent(data, tuple(path))[path[-1]] = copy.deepcopy(value)

    return mutate


def delete(*path: PathPart) -> Mutation:
    def mutate(data: Data) -> None:
        del _parent(data, path)[path[-1]]

    return mutate


def rename(table: str, old: str, new: str) -> Mutation:
    """A mutation that renames a key of a table ("relay.transports.1": the second transport), keeping its place."""

    def mutate(data: Data) -> None:
        node: Any = data
        for part in table.split(".") if table else ():
            node = node[int(part)] if part.isdigit() else node[part]
        items = list(node.items())
        node.clear()
        node.update((new if key == old else key, value) for key, value in items)

    return mutate


def parse_broken(data: Data, mutate: Mutation) -> SiteError:
    broken = copy.deepcopy(data)
    mutate(broken)
    with pytest.raises(SiteError) as caught:
        parse_site(broken, "site.toml")
    return caught.value


# -- the default site's fixture ----------------------------------------------


def test_real_site_loads_into_the_model(data: Data) -> None:
    site = parse_site(data, "site.toml")
    assert site.source == "site.toml"
    assert site.domain == "nos-oignons.net"
    assert site.root_alias == "machines@nos-oignons.net"
    assert len(site.users_to_root) == 34
    assert site.users_to_root[:3] == ("mailer-daemon", "postmaster", "nobody")
    assert "root" not in site.users_to_root
    assert site.tls == TlsPolicy(
        mandatory_protocols=">=TLSv1.2",
        exclude_ciphers=("NULL", "MD5", "DES", "RC4"),
        mandatory_ciphers="high",
        loglevel=1,
        note_starttls_offer=True,
    )
    relay = site.relay
    assert relay.hostname == "bulbe.nos-oignons.net"
    assert relay.mydomain == "bulbe.nos-oignons.net"
    assert relay.destinations == (
        "nos-oignons.net",
        "bulbe.nos-oignons.net",
        "nos-oignons.org",
        "bulbe.nos-oignons.org",
        "nos-oignons.fr",
        "bulbe.nos-oignons.fr",
        "bulbe.tetaneutral.net",
    )
    assert relay.recipient_delimiter == "+"
    assert relay.schleuder_lists == ("machines@nos-oignons.net",)
    assert relay.default_destination_concurrency_limit == 10
    assert relay.client_limits == ClientLimits(
        connection_rate_limit=100,
        message_rate_limit=100,
        connection_count_limit=10,
        recipient_rate_limit=100,
        recipients_per_message=500,
    )
    assert site.smarthost.fingerprint_digest == "sha1"
    assert site.smarthost.relay_pins == (REAL_PIN,)
    assert site.package == Package("Nos oignons <contact@nos-oignons.net>", "Nos oignons", "https://nos-oignons.net/")


def test_real_site_responder(data: Data) -> None:
    responder = parse_site(data, "site.toml").relay.responder
    assert responder.local_parts == ("dons", "donner", "donate")
    assert responder.from_address == "dons@nos-oignons.net"
    assert responder.iban == REAL_IBAN
    assert responder.bic == "PSSTFRPPPAR"
    assert responder.account_holder == "Nos oignons"
    assert responder.rate_limit_seconds == 7 * 86400
    # The placeholders are filled in, the leading newline of the TOML string is gone.
    assert responder.text.startswith("Bonjour,\n\nMerci de votre intérêt pour Nos oignons !")
    assert "  Titulaire : Nos oignons\n  IBAN      : FR14 2004 1010 0505 0001 3M02 606\n" in responder.text
    assert "  BIC       : PSSTFRPPPAR\n" in responder.text
    assert responder.text.endswith("Nos oignons -- https://nos-oignons.net/\n")
    assert "{" not in responder.text


def test_real_site_transports(data: Data) -> None:
    assert parse_site(data, "site.toml").relay.transports == (
        Transport(
            name="slow",
            process_limit=5,
            destinations=("orange.fr",),
            initial_destination_concurrency=None,
            destination_concurrency_limit=2,
            destination_recipient_limit=20,
            destination_rate_delay="2s",
        ),
        Transport(
            name="yahoo",
            process_limit=5,
            destinations=("yahoo.com",),
            initial_destination_concurrency=1,
            destination_concurrency_limit=4,
            destination_recipient_limit=2,
            destination_rate_delay="1s",
        ),
    )


def test_load_site_reads_the_real_file() -> None:
    site = load_site(SITE_FILE)
    assert site.source == str(SITE_FILE)
    assert site.domain == "nos-oignons.net"


# -- normalisation ------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "ACAD757F58C3CF53EFA0D2E30A643DE9A2C45828",
        "AC:AD:75:7F:58:C3:CF:53:EF:A0:D2:E3:0A:64:3D:E9:A2:C4:58:28",
        "acad757f58c3cf53efa0d2e30a643de9a2c45828",
    ],
)
def test_pins_are_normalised_to_lower_case_colon_separated(data: Data, written: str) -> None:
    data["smarthost"]["relay_pins"] = [written]
    assert parse_site(data, "site.toml").smarthost.relay_pins == (REAL_PIN,)


def test_sha256_pins(data: Data) -> None:
    data["smarthost"]["fingerprint_digest"] = "sha256"
    data["smarthost"]["relay_pins"] = [SHA256_PIN, "FF" * 32]
    smarthost = parse_site(data, "site.toml").smarthost
    assert smarthost.fingerprint_digest == "sha256"
    assert smarthost.relay_pins == (
        "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff",
        "ff:" * 31 + "ff",
    )


@pytest.mark.parametrize(
    "written", ["FR1420041010050500013M02606", "fr14 2004 1010 0505 0001 3m02 606", "FR14 20041010 0505 00013M02606"]
)
def test_iban_is_grouped_by_four_and_filled_into_the_text(data: Data, written: str) -> None:
    data["relay"]["responder"]["iban"] = written
    responder = parse_site(data, "site.toml").relay.responder
    assert responder.iban == "FR14 2004 1010 0505 0001 3M02 606"
    assert "IBAN      : FR14 2004 1010 0505 0001 3M02 606\n" in responder.text


@pytest.mark.parametrize(("rate", "seconds"), [("90", 90), ("30s", 30), ("2m", 120), ("2h", 7200), ("1w", 604800)])
def test_rate_limit_in_seconds(data: Data, rate: str, seconds: int) -> None:
    data["relay"]["responder"]["rate_limit"] = rate
    assert parse_site(data, "site.toml").relay.responder.rate_limit_seconds == seconds


def test_text_may_use_every_placeholder(data: Data) -> None:
    data["relay"]["responder"]["text"] = "\n\n{account_holder}: {iban} ({bic}), {{literal}}\n\n\n"
    text = parse_site(data, "site.toml").relay.responder.text
    assert text == "Nos oignons: FR14 2004 1010 0505 0001 3M02 606 (PSSTFRPPPAR), {literal}\n"


def test_optional_transport_limits_may_be_left_out(data: Data) -> None:
    data["relay"]["transports"] = [{"name": "bulk", "process_limit": 2, "destinations": ["example.org"]}]
    assert parse_site(data, "site.toml").relay.transports == (
        Transport("bulk", 2, ("example.org",), None, None, None, None),
    )


def test_no_transports_and_no_schleuder_lists(data: Data) -> None:
    data["relay"]["transports"] = []
    data["relay"]["schleuder_lists"] = []
    site = parse_site(data, "site.toml")
    assert site.relay.transports == ()
    assert site.relay.schleuder_lists == ()


# -- one case per rule ----------------------------------------------------------

DOMAIN_RULE = "not a domain name (lower-case labels of letters, digits and '-', at least two labels)"
DOMAIN_HINT = "write it like nos-oignons.net, without a trailing dot"
ADDRESS_RULE = "not a mail address (local-part@domain, lower case)"
SHA1_RULE = "not hex of a sha1 digest (20 bytes: 40 hex digits, colons between bytes optional)"
SHA256_RULE = "not hex of a sha256 digest (32 bytes: 64 hex digits, colons between bytes optional)"
PIN_HINT = "compute it on the relay with `oignons-mail pin --cert CERT.pem`"
TIME_RULE = "not a Postfix time (a whole number and an optional unit s, m, h, d or w)"
PATH_RULE = "not an absolute path without spaces or '..'"
IBAN_FORM_RULE = "not an IBAN (country code, two check digits, up to 30 letters or digits)"
BIC_RULE = "not a BIC (8 or 11 upper-case letters and digits)"
TRANSPORT_KEYS = (
    "destination_concurrency_limit, destination_rate_delay, destination_recipient_limit, destinations, "
    "initial_destination_concurrency, name, process_limit"
)


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    key: str
    shown: str | None  # the value as str(error) quotes it; None: the key is absent
    rule: str
    hint: str | None = None  # None: not checked

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


IP_RULE = "is an IP address, not a host or domain name (Postfix looks a name up in the DNS here)"

CASES = [
    # dkim.selector: the ARC keys' selector is taken
    Case(
        "dkim-selector-arc",
        set_("dkim", "selector", "arc"),
        "dkim.selector",
        '"arc"',
        "is the selector of the relay's ARC keys ('arc')",
        'e.g. "oignons2026"',
    ),
    # relay.node_pins: node name -> sha256 pin of its client certificate
    Case(
        "node-pin-bad-node-name",
        set_("relay", "node_pins", {"Marcuse!": "ab" * 32}),
        "relay.node_pins.Marcuse!",
        '"Marcuse!"',
        "not a host name label (letters, digits and '-', at most 63)",
    ),
    Case(
        "node-pin-sha1-length",
        set_("relay", "node_pins", {"marcuse": "ab" * 20}),
        "relay.node_pins.marcuse",
        '"' + "ab" * 20 + '"',
        "not hex of a sha256 digest (32 bytes: 64 hex digits, colons between bytes optional)",
    ),
    Case(
        "node-pin-not-a-string",
        set_("relay", "node_pins", {"marcuse": 42}),
        "relay.node_pins.marcuse",
        "42",
        "must be a string",
    ),
    Case(
        "node-pins-not-a-table",
        set_("relay", "node_pins", ["marcuse"]),
        "relay.node_pins",
        "['marcuse']",
        "must be a table of strings",
    ),
    # unknown keys: a misspelt key is unknown (with the closest known one), not its right spelling missing
    Case(
        "misspelt-key",
        rename("relay", "banner_suffix", "banner_sufix"),
        "relay.banner_sufix",
        '"Debian GNU/Oignons"',
        "unknown key",
        "did you mean `banner_suffix`?",
    ),
    Case(
        "misspelt-table",
        rename("", "relay", "relais"),
        "relais",
        None,
        "unknown key",
        "did you mean `relay`?",
    ),
    Case(
        "misspelt-key-in-nested-table",
        rename("relay.client_limits", "message_rate_limit", "message_rate_limt"),
        "relay.client_limits.message_rate_limt",
        "100",
        "unknown key",
        "did you mean `message_rate_limit`?",
    ),
    Case(
        "misspelt-key-in-second-array-table",
        rename("relay.transports.1", "process_limit", "proces_limit"),
        "relay.transports[1].proces_limit",
        "5",
        "unknown key",
        "did you mean `process_limit`?",
    ),
    Case(
        "misspelt-key-in-optional-table",
        rename("dkim", "selector", "selecter"),
        "dkim.selecter",
        '"bulbe1"',
        "unknown key",
        "did you mean `selector`?",
    ),
    Case(
        "unknown-in-transport-far-from-any",
        set_("relay", "transports", 0, "colour", "blue"),
        "relay.transports[0].colour",
        '"blue"',
        "unknown key",
        f"known keys here: {TRANSPORT_KEYS}",
    ),
    Case(
        "unknown-top-level",
        set_("extra", 1),
        "extra",
        "1",
        "unknown key",
        "known keys here: dkim, dns, fleet, package, relay, site, smarthost, tls",
    ),
    Case(
        "unknown-in-site",
        set_("site", "domian", "nos-oignons.net"),
        "site.domian",
        '"nos-oignons.net"',
        "unknown key",
        "did you mean `domain`?",
    ),
    Case(
        "unknown-in-transport",
        set_("relay", "transports", 0, "rate_delay", "2s"),
        "relay.transports[0].rate_delay",
        '"2s"',
        "unknown key",
        "did you mean `destination_rate_delay`?",
    ),
    # missing keys
    Case(
        "missing-domain",
        delete("site", "domain"),
        "site.domain",
        None,
        "missing",
        'add `domain = "nos-oignons.net"` to [site]',
    ),
    Case(
        "missing-iban",
        delete("relay", "responder", "iban"),
        "relay.responder.iban",
        None,
        "missing",
        'add `iban = "FR14 2004 1010 0505 0001 3M02 606"` to [relay.responder]',
    ),
    Case("missing-table", delete("smarthost"), "smarthost", None, "missing"),
    # wrong types
    Case(
        "string-for-list",
        set_("site", "users_to_root", "postmaster"),
        "site.users_to_root",
        '"postmaster"',
        "must be a list of strings",
        'e.g. users_to_root = ["mailer-daemon", "postmaster", "nobody"]',
    ),
    Case(
        "bool-for-int",
        set_("tls", "loglevel", True),
        "tls.loglevel",
        "true",
        "must be a whole number",
        "e.g. loglevel = 1",
    ),
    Case(
        "int-in-string-list",
        set_("site", "users_to_root", ["nobody", 3]),
        "site.users_to_root[1]",
        "3",
        "must be a string",
        'quote it, e.g. users_to_root = ["mailer-daemon", "postmaster", "nobody"]',
    ),
    Case(
        "string-for-bool",
        set_("tls", "note_starttls_offer", "yes"),
        "tls.note_starttls_offer",
        '"yes"',
        "must be true or false",
        "e.g. note_starttls_offer = true",
    ),
    Case(
        "int-for-string",
        set_("site", "domain", 42),
        "site.domain",
        "42",
        "must be a string",
        'e.g. domain = "nos-oignons.net"',
    ),
    Case("string-for-table", set_("tls", "strong"), "tls", '"strong"', "must be a table", "write it as a [tls] table"),
    Case(
        "table-for-array-of-tables",
        set_("relay", "transports", {"name": "slow"}),
        "relay.transports",
        "{'name': 'slow'}",
        "must be an array of tables ([[...]])",
        "write it as a [[relay.transports]] table",
    ),
    Case(
        "array-of-tables-item-not-a-table",
        set_("relay", "transports", ["slow"]),
        "relay.transports[0]",
        '"slow"',
        "must be a table",
        "write each as a [[relay.transports]] table",
    ),
    Case(
        "int-for-process-limit-zero",
        set_("relay", "transports", 0, "process_limit", 0),
        "relay.transports[0].process_limit",
        "0",
        "must be a whole number of at least 1",
        "write 1 or more",
    ),
    # domains
    Case(
        "domain-upper-case",
        set_("site", "domain", "Nos-Oignons.net"),
        "site.domain",
        '"Nos-Oignons.net"',
        DOMAIN_RULE,
        DOMAIN_HINT,
    ),
    Case(
        "domain-trailing-dot",
        set_("site", "domain", "nos-oignons.net."),
        "site.domain",
        '"nos-oignons.net."',
        DOMAIN_RULE,
        DOMAIN_HINT,
    ),
    Case(
        "domain-one-label", set_("site", "domain", "localhost"), "site.domain", '"localhost"', DOMAIN_RULE, DOMAIN_HINT
    ),
    Case(
        "domain-label-starts-with-dash",
        set_("site", "domain", "-oignons.net"),
        "site.domain",
        '"-oignons.net"',
        DOMAIN_RULE,
    ),
    Case(
        "domain-label-ends-with-dash",
        set_("site", "domain", "oignons-.net"),
        "site.domain",
        '"oignons-.net"',
        DOMAIN_RULE,
    ),
    Case("domain-empty-label", set_("site", "domain", "nos..net"), "site.domain", '"nos..net"', DOMAIN_RULE),
    Case(
        "relay-destination",
        set_("relay", "destinations", 2, "nos_oignons.org"),
        "relay.destinations[2]",
        '"nos_oignons.org"',
        DOMAIN_RULE,
    ),
    # mail addresses
    Case("address-without-at", set_("site", "root_alias", "machines"), "site.root_alias", '"machines"', ADDRESS_RULE),
    Case(
        "address-upper-case",
        set_("site", "root_alias", "Machines@nos-oignons.net"),
        "site.root_alias",
        '"Machines@nos-oignons.net"',
        ADDRESS_RULE,
    ),
    Case(
        "address-empty-local-part",
        set_("site", "root_alias", "@nos-oignons.net"),
        "site.root_alias",
        '"@nos-oignons.net"',
        ADDRESS_RULE,
    ),
    Case(
        "address-bad-domain",
        set_("site", "root_alias", "machines@nos-oignons"),
        "site.root_alias",
        '"machines@nos-oignons"',
        DOMAIN_RULE,
    ),
    # lists
    Case(
        "users-to-root-has-root",
        set_("site", "users_to_root", ["nobody", "root"]),
        "site.users_to_root[1]",
        '"root"',
        "must not list root itself (a mail loop)",
        "remove it: root's mail goes to site.root_alias",
    ),
    Case(
        "user-name",
        set_("site", "users_to_root", ["Nobody"]),
        "site.users_to_root[0]",
        '"Nobody"',
        "not a user or alias name (lower case, starting with a letter or '_')",
    ),
    Case(
        "duplicate-item",
        set_("site", "users_to_root", ["nobody", "news", "nobody"]),
        "site.users_to_root[2]",
        '"nobody"',
        "is listed twice",
        "remove it: users_to_root[0] is the same",
    ),
    Case(
        "duplicate-pin-after-normalising",
        set_("smarthost", "relay_pins", [REAL_PIN, REAL_PIN.upper().replace(":", "")]),
        "smarthost.relay_pins[1]",
        '"ACAD757F58C3CF53EFA0D2E30A643DE9A2C45828"',
        "is listed twice",
    ),
    Case(
        "empty-destinations",
        set_("relay", "destinations", []),
        "relay.destinations",
        "[]",
        "must not be an empty list",
        'list at least one, e.g. destinations = ["nos-oignons.net", "bulbe.nos-oignons.net"]',
    ),
    Case(
        "empty-local-parts",
        set_("relay", "responder", "local_parts", []),
        "relay.responder.local_parts",
        "[]",
        "must not be an empty list",
    ),
    # fingerprints
    Case(
        "pin-not-hex",
        set_("smarthost", "relay_pins", ["zz" + REAL_PIN[2:]]),
        "smarthost.relay_pins[0]",
        '"zz:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28"',
        SHA1_RULE,
        PIN_HINT,
    ),
    Case(
        "pin-too-short-for-sha1",
        set_("smarthost", "relay_pins", [REAL_PIN[:-3]]),
        "smarthost.relay_pins[0]",
        '"ac:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58"',
        SHA1_RULE,
    ),
    Case(
        "sha256-pin-with-sha1-digest",
        set_("smarthost", "relay_pins", [SHA256_PIN]),
        "smarthost.relay_pins[0]",
        f'"{SHA256_PIN}"',
        SHA1_RULE,
    ),
    Case(
        "sha1-pin-with-sha256-digest",
        set_("smarthost", "fingerprint_digest", "sha256"),
        "smarthost.relay_pins[0]",
        f'"{REAL_PIN}"',
        SHA256_RULE,
    ),
    Case(
        "pin-bad-colons",
        set_("smarthost", "relay_pins", ["acad:757f:58c3:cf53:efa0:d2e3:0a64:3de9:a2c4:5828"]),
        "smarthost.relay_pins[0]",
        '"acad:757f:58c3:cf53:efa0:d2e3:0a64:3de9:a2c4:5828"',
        SHA1_RULE,
    ),
    Case(
        "pin-trailing-colon",
        set_("smarthost", "relay_pins", [REAL_PIN + ":"]),
        "smarthost.relay_pins[0]",
        f'"{REAL_PIN}:"',
        SHA1_RULE,
    ),
    Case(
        "digest-md5",
        set_("smarthost", "fingerprint_digest", "md5"),
        "smarthost.fingerprint_digest",
        '"md5"',
        "not a supported fingerprint digest (sha1 or sha256)",
    ),
    Case(
        "digest-upper-case",
        set_("smarthost", "fingerprint_digest", "SHA256"),
        "smarthost.fingerprint_digest",
        '"SHA256"',
        "not a supported fingerprint digest (sha1 or sha256)",
    ),
    # bank details
    Case(
        "iban-mod-97",
        set_("relay", "responder", "iban", "FR14 2004 1010 0505 0001 3M02 607"),
        "relay.responder.iban",
        '"FR14 2004 1010 0505 0001 3M02 607"',
        "not a valid IBAN: the mod-97 check fails (ISO 7064)",
        "a digit is probably mistyped",
    ),
    Case(
        "iban-check-digits",
        set_("relay", "responder", "iban", "FR15 2004 1010 0505 0001 3M02 606"),
        "relay.responder.iban",
        '"FR15 2004 1010 0505 0001 3M02 606"',
        "not a valid IBAN: the mod-97 check fails (ISO 7064)",
    ),
    Case(
        "iban-too-short",
        set_("relay", "responder", "iban", "FR14 2004"),
        "relay.responder.iban",
        '"FR14 2004"',
        IBAN_FORM_RULE,
    ),
    Case(
        "iban-no-country",
        set_("relay", "responder", "iban", "1420041010050500013M02606"),
        "relay.responder.iban",
        '"1420041010050500013M02606"',
        IBAN_FORM_RULE,
    ),
    Case(
        "iban-punctuation",
        set_("relay", "responder", "iban", "FR14-2004-1010-0505-0001-3M02-606"),
        "relay.responder.iban",
        '"FR14-2004-1010-0505-0001-3M02-606"',
        IBAN_FORM_RULE,
    ),
    Case(
        "bic-ten-characters",
        set_("relay", "responder", "bic", "PSSTFRPPPA"),
        "relay.responder.bic",
        '"PSSTFRPPPA"',
        BIC_RULE,
    ),
    Case(
        "bic-lower-case",
        set_("relay", "responder", "bic", "psstfrpppar"),
        "relay.responder.bic",
        '"psstfrpppar"',
        BIC_RULE,
    ),
    Case(
        "bic-digit-in-bank-code",
        set_("relay", "responder", "bic", "P5STFRPP"),
        "relay.responder.bic",
        '"P5STFRPP"',
        BIC_RULE,
    ),
    # Postfix times
    Case(
        "rate-with-space",
        set_("relay", "responder", "rate_limit", "2 s"),
        "relay.responder.rate_limit",
        '"2 s"',
        TIME_RULE,
        'e.g. "2s"',
    ),
    Case(
        "rate-bad-unit", set_("relay", "responder", "rate_limit", "2x"), "relay.responder.rate_limit", '"2x"', TIME_RULE
    ),
    Case(
        "rate-negative",
        set_("relay", "responder", "rate_limit", "-1s"),
        "relay.responder.rate_limit",
        '"-1s"',
        TIME_RULE,
    ),
    Case("rate-empty", set_("relay", "responder", "rate_limit", ""), "relay.responder.rate_limit", '""', TIME_RULE),
    Case(
        "transport-rate-delay",
        set_("relay", "transports", 1, "destination_rate_delay", "1 s"),
        "relay.transports[1].destination_rate_delay",
        '"1 s"',
        TIME_RULE,
    ),
    # TLS
    Case(
        "tls-protocols-garbage",
        set_("tls", "mandatory_protocols", "TLS 1.2 or better"),
        "tls.mandatory_protocols",
        '"TLS 1.2 or better"',
        "not a Postfix TLS protocol list",
        'use ">=TLSv1.2" (Postfix >= 3.6) or a list such as "!SSLv2, !SSLv3, !TLSv1"',
    ),
    Case(
        "tls-protocols-unknown-version",
        set_("tls", "mandatory_protocols", ">=TLSv1.4"),
        "tls.mandatory_protocols",
        '">=TLSv1.4"',
        "not a Postfix TLS protocol list",
    ),
    Case(
        "cipher-grade",
        set_("tls", "mandatory_ciphers", "strong"),
        "tls.mandatory_ciphers",
        '"strong"',
        "not a Postfix cipher grade (one of high, medium, low, export, null)",
    ),
    Case("loglevel-5", set_("tls", "loglevel", 5), "tls.loglevel", "5", "not a Postfix TLS log level (0 to 4)"),
    Case(
        "loglevel-negative", set_("tls", "loglevel", -1), "tls.loglevel", "-1", "not a Postfix TLS log level (0 to 4)"
    ),
    Case(
        "exclude-ciphers-empty-item",
        set_("tls", "exclude_ciphers", ["NULL", " "]),
        "tls.exclude_ciphers[1]",
        '" "',
        "not an OpenSSL cipher name (letters, digits, '+' and '-')",
    ),
    # relay
    Case(
        "relative-cert-file",
        set_("relay", "tls_cert_file", "ssl/certs/bulbe.pem"),
        "relay.tls_cert_file",
        '"ssl/certs/bulbe.pem"',
        PATH_RULE,
    ),
    Case(
        "key-file-with-dotdot",
        set_("relay", "tls_key_file", "/etc/ssl/../private/bulbe.key"),
        "relay.tls_key_file",
        '"/etc/ssl/../private/bulbe.key"',
        PATH_RULE,
    ),
    Case(
        "milter-socket-with-space",
        set_("relay", "rspamd_milter_socket", "/run/rspamd/milter sock"),
        "relay.rspamd_milter_socket",
        '"/run/rspamd/milter sock"',
        PATH_RULE,
    ),
    Case(
        "recipient-delimiter-two-characters",
        set_("relay", "recipient_delimiter", "ab"),
        "relay.recipient_delimiter",
        '"ab"',
        "must be one punctuation character",
        'e.g. "+", not "@" or "."',
    ),
    Case(
        "recipient-delimiter-dot",
        set_("relay", "recipient_delimiter", "."),
        "relay.recipient_delimiter",
        '"."',
        "must be one punctuation character",
    ),
    Case(
        "recipient-delimiter-letter",
        set_("relay", "recipient_delimiter", "a"),
        "relay.recipient_delimiter",
        '"a"',
        "must be one punctuation character",
    ),
    Case(
        "banner-suffix-blank",
        set_("relay", "banner_suffix", "  "),
        "relay.banner_suffix",
        '"  "',
        "must not be empty",
    ),
    Case(
        "schleuder-list-outside-destinations",
        set_("relay", "schleuder_lists", ["machines@nos-oignons.net", "tor@example.org"]),
        "relay.schleuder_lists[1]",
        '"tor@example.org"',
        "is not in a domain of relay.destinations",
        "the relay accepts mail only for its destinations",
    ),
    # sites that would not deliver mail
    Case(
        "root-alias-outside-destinations-without-node-pins",
        set_("site", "root_alias", "machines@example.org"),
        "site.root_alias",
        '"machines@example.org"',
        "is outside relay.destinations while relay.node_pins is empty: the nodes may not relay, "
        "so the relay would refuse every node's mail to root",
        "use an address in relay.destinations, or give the nodes the right to relay in relay.node_pins",
    ),
    Case(
        "site-domain-outside-destinations",
        set_("site", "domain", "nos-oignons.eu"),
        "site.domain",
        '"nos-oignons.eu"',
        "is not in relay.destinations: the relay would refuse mail for the site's own domain "
        "(postmaster@, root@ of the nodes)",
        'add "nos-oignons.eu" to relay.destinations',
    ),
    Case(
        "relay-hostname-ipv4",
        set_("relay", "hostname", "192.0.2.25"),
        "relay.hostname",
        '"192.0.2.25"',
        IP_RULE,
        "write the name, e.g. bulbe.nos-oignons.net",
    ),
    Case(
        "relay-mydomain-ipv6-literal",
        set_("relay", "mydomain", "[2001:db8::25]"),
        "relay.mydomain",
        '"[2001:db8::25]"',
        IP_RULE,
    ),
    Case(
        "destination-ipv4",
        set_("relay", "destinations", ["nos-oignons.net", "bulbe.nos-oignons.net", "10.0.0.1"]),
        "relay.destinations[2]",
        '"10.0.0.1"',
        IP_RULE,
    ),
    Case(
        "site-domain-ipv4",
        set_("site", "domain", "127.0.0.1"),
        "site.domain",
        '"127.0.0.1"',
        IP_RULE,
    ),
    # package: what the Debian packages say of their origin
    Case(
        "package-maintainer-without-address",
        set_("package", "maintainer", "Nos oignons"),
        "package.maintainer",
        '"Nos oignons"',
        'not a maintainer: "Name <address>"',
        'e.g. "Nos oignons <contact@nos-oignons.net>"',
    ),
    Case(
        "package-homepage-not-http",
        set_("package", "homepage", "nos-oignons.net"),
        "package.homepage",
        '"nos-oignons.net"',
        "not an http(s) address",
    ),
    Case(
        "package-organisation-two-lines",
        set_("package", "organisation", "Nos\noignons"),
        "package.organisation",
        '"Nos\\noignons"',
        "must be one line of text, without control characters",
    ),
    # responder
    Case(
        "from-address-outside-destinations",
        set_("relay", "responder", "from_address", "dons@example.org"),
        "relay.responder.from_address",
        '"dons@example.org"',
        "is not in a domain of relay.destinations",
    ),
    Case(
        "local-part",
        set_("relay", "responder", "local_parts", ["dons", "Donner"]),
        "relay.responder.local_parts[1]",
        '"Donner"',
        "not the local part of an address (lower-case letters, digits, '.', '_', '+', '-')",
    ),
    Case(
        "text-without-iban",
        set_("relay", "responder", "text", "Merci !\nBIC: {bic}\n"),
        "relay.responder.text",
        '"Merci !\\nBIC: {bic}\\n"',
        "must contain the placeholder {iban}",
        "the reply is for the IBAN",
    ),
    Case(
        "text-unknown-placeholder",
        set_("relay", "responder", "text", "IBAN: {iban} {foo}"),
        "relay.responder.text",
        '"IBAN: {iban} {foo}"',
        "has an unknown placeholder {foo}",
        "known: {iban}, {bic}, {account_holder}",
    ),
    Case(
        "text-lone-brace",
        set_("relay", "responder", "text", "IBAN: {iban} {"),
        "relay.responder.text",
        '"IBAN: {iban} {"',
        "has a broken placeholder (Single '{' encountered in format string)",
    ),
    Case(
        "subject-empty",
        set_("relay", "responder", "subject", ""),
        "relay.responder.subject",
        '""',
        "must not be empty",
    ),
    # transports
    Case(
        "transport-named-smtp",
        set_("relay", "transports", 0, "name", "smtp"),
        "relay.transports[0].name",
        '"smtp"',
        "names a service that master.cf already has",
        "choose another name, e.g. slow",
    ),
    Case(
        "transport-named-schleuder",
        set_("relay", "transports", 1, "name", "schleuder"),
        "relay.transports[1].name",
        '"schleuder"',
        "names a service that master.cf already has",
    ),
    Case(
        "transport-name-upper-case",
        set_("relay", "transports", 0, "name", "Slow"),
        "relay.transports[0].name",
        '"Slow"',
        "not a transport name (lower-case letters and digits, starting with a letter)",
    ),
    Case(
        "transport-same-name",
        set_("relay", "transports", 1, "name", "slow"),
        "relay.transports[1].name",
        '"slow"',
        "is the name of another transport",
    ),
    Case(
        "destination-in-two-transports",
        set_("relay", "transports", 1, "destinations", ["yahoo.com", "orange.fr"]),
        "relay.transports[1].destinations[1]",
        '"orange.fr"',
        "is routed by another transport already",
    ),
    # relay.client_limits: anvil limits per client address and minute
    Case(
        "client-limit-zero",
        set_("relay", "client_limits", "connection_rate_limit", 0),
        "relay.client_limits.connection_rate_limit",
        "0",
        "must be a whole number from 1 to 10000",
        "a limit per client address and minute; Postfix's 0 (no limit) is not offered",
    ),
    Case(
        "client-limit-huge",
        set_("relay", "client_limits", "message_rate_limit", 100000),
        "relay.client_limits.message_rate_limit",
        "100000",
        "must be a whole number from 1 to 10000",
    ),
    Case(
        "client-limit-not-a-number",
        set_("relay", "client_limits", "connection_count_limit", "20"),
        "relay.client_limits.connection_count_limit",
        '"20"',
        "must be a whole number",
    ),
    Case(
        "client-limits-missing",
        delete("relay", "client_limits"),
        "relay.client_limits",
        None,
        "missing",
        "add a [relay.client_limits] table",
    ),
]


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_rule(data: Data, case: Case) -> None:
    error = parse_broken(data, case.mutate)
    assert error.file == "site.toml"
    assert error.key == case.key
    assert error.rule == case.rule
    message = str(error)
    if case.shown is None:
        assert error.value is ABSENT
        assert message.startswith(f"site.toml: {case.key}: {case.rule}")
    else:
        assert message.startswith(f"site.toml: {case.key} = {case.shown}: {case.rule}")
    assert error.hint, "every error gives a hint"
    if case.hint is not None:
        assert error.hint == case.hint
        assert message.endswith(f"\n  hint: {case.hint}")


def test_error_message_format(data: Data) -> None:
    error = parse_broken(data, set_("site", "domain", "Nos-Oignons.net"))
    assert str(error) == (
        'site.toml: site.domain = "Nos-Oignons.net": not a domain name '
        "(lower-case labels of letters, digits and '-', at least two labels)\n"
        "  hint: write it like nos-oignons.net, without a trailing dot"
    )


def test_error_message_of_a_value_check(data: Data) -> None:
    error = parse_broken(data, set_("tls", "loglevel", 5))
    assert str(error) == (
        "site.toml: tls.loglevel = 5: not a Postfix TLS log level (0 to 4)\n"
        "  hint: 1 logs a summary of each TLS handshake (postconf(5))"
    )


def test_error_message_of_a_missing_key(data: Data) -> None:
    error = parse_broken(data, delete("relay", "hostname"))
    assert str(error) == (
        'site.toml: relay.hostname: missing\n  hint: add `hostname = "bulbe.nos-oignons.net"` to [relay]'
    )


# -- load_site: the file itself -------------------------------------------------


def test_load_site_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert caught.value.file == str(path)
    assert caught.value.key == ""
    assert caught.value.rule == "no such file"
    assert str(caught.value) == f"{path}: no such file\n  hint: copy sites/nos-oignons.toml and edit it"


def test_load_site_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[site\ndomain = "nos-oignons.net"\n', encoding="utf-8")
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert caught.value.file == str(path)
    assert caught.value.rule.startswith("is not valid TOML: ")
    assert str(caught.value).startswith(f"{path}: is not valid TOML: ")


def test_load_site_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[site]\ndomain = "café.net"\n'.encode("latin-1"))
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert caught.value.file == str(path)
    assert caught.value.rule.startswith("cannot be read: 'utf-8' codec can't decode byte 0xe9")
    assert str(caught.value).startswith(f"{path}: cannot be read: ")


def test_load_site_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b"\xef\xbb\xbf" + SITE_FILE.read_bytes())
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert str(caught.value) == (
        f"{path}: starts with a UTF-8 byte order mark (BOM, bytes EF BB BF), which TOML does not allow\n"
        f"  hint: save it as UTF-8 without a BOM, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {path}"
    )


def test_root_alias_outside_destinations_with_node_pins(data: Data) -> None:
    # The nodes may relay (permit_tls_clientcerts), so root's mail may go to another domain.
    data["site"]["root_alias"] = "machines@example.org"
    data["relay"]["node_pins"] = {"marcuse": SHA256_PIN}
    assert parse_site(data, "site.toml").root_alias == "machines@example.org"


@pytest.mark.parametrize("name", ["mx1.nos-oignons.net", "0x.example.org", "1.example.org"])
def test_names_with_digits_are_not_ip_addresses(data: Data, name: str) -> None:
    data["relay"]["destinations"].append(name)
    assert name in parse_site(data, "site.toml").relay.destinations


def test_load_site_validates(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE_FILE.read_text(encoding="utf-8").replace("loglevel = 1", "loglevel = 9"), encoding="utf-8")
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert caught.value.file == str(path)
    assert caught.value.key == "tls.loglevel"


# -- known gaps: each test shows a bug of src/ (see the report) ------------------


def test_text_placeholder_attribute_is_a_site_error(data: Data) -> None:
    error = parse_broken(data, set_("relay", "responder", "text", "IBAN: {iban} {iban.foo}"))
    assert error.key == "relay.responder.text"


def test_escaped_iban_placeholder_is_refused(data: Data) -> None:
    error = parse_broken(data, set_("relay", "responder", "text", "Notre IBAN : {{iban}}"))
    assert error.key == "relay.responder.text"
    assert error.rule == "must contain the placeholder {iban}"


def test_a_valid_transport_name_renders(data: Data) -> None:
    data["relay"]["transports"][0]["name"] = "slow2"
    main_cf = render(parse_site(data, "site.toml"))["relay/main.cf"].splitlines()
    assert "slow2_destination_concurrency_limit = 2" in main_cf
    assert not any(line.startswith("slow_") for line in main_cf)


def test_a_transport_name_with_a_dash_is_refused(data: Data) -> None:
    # A '-' would start main.cf parameter names such as slow-lane_destination_rate_delay.
    error = parse_broken(data, set_("relay", "transports", 0, "name", "slow-lane"))
    assert error.key == "relay.transports[0].name"
    assert error.rule == "not a transport name (lower-case letters and digits, starting with a letter)"


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("relay", "banner_suffix"), "relay.banner_suffix"),
        (("tls", "exclude_ciphers", 0), "tls.exclude_ciphers[0]"),
        (("relay", "responder", "subject"), "relay.responder.subject"),
    ],
)
def test_newline_in_a_one_line_value_is_refused(data: Data, path: tuple[PathPart, ...], key: str) -> None:
    error = parse_broken(data, set_(*path, "two\nlines"))
    assert error.key == key


def test_transport_named_default_is_refused(data: Data) -> None:
    error = parse_broken(data, set_("relay", "transports", 0, "name", "default"))
    assert error.key == "relay.transports[0].name"


def test_transport_of_a_relay_destination_is_refused(data: Data) -> None:
    error = parse_broken(data, set_("relay", "transports", 0, "destinations", ["nos-oignons.net"]))
    assert error.key == "relay.transports[0].destinations[0]"


def test_missing_top_level_table_hint(data: Data) -> None:
    error = parse_broken(data, delete("smarthost"))
    assert "[]" not in error.hint
    assert "[smarthost]" in error.hint


def test_only_rfc_2142_system_aliases_are_public(data: Data) -> None:
    """From outside, the system aliases but RFC 2142's get the unknown-user reply; root too."""
    table = render(parse_site(data, "site.toml"))["relay/tables.d/local_only_recipients"]
    entries = dict(line.split(None, 1) for line in table.splitlines() if line and not line.startswith("#"))
    for public in ("postmaster@", "abuse@", "hostmaster@", "webmaster@", "security@", "noc@", "www@", "ftp@"):
        assert public not in entries
    for private in ("root@", "debian-tor@", "_apt@", "systemd-network@", "www-data@", "mailer-daemon@"):
        assert entries[private] == "550 5.1.1 User unknown in local recipient table"


def test_client_limits_reach_main_cf(data: Data) -> None:
    data["relay"]["client_limits"] = {
        "connection_rate_limit": 7,
        "message_rate_limit": 8,
        "connection_count_limit": 9,
    }
    lines = render(parse_site(data, "site.toml"))["relay/main.cf"].splitlines()
    assert "smtpd_client_connection_rate_limit = 7" in lines
    assert "smtpd_client_message_rate_limit = 8" in lines
    assert "smtpd_client_connection_count_limit = 9" in lines
    # Left out: the defaults.
    assert "smtpd_client_recipient_rate_limit = 100" in lines
    assert "smtpd_recipient_limit = 500" in lines


def test_recipient_limits_reach_main_cf(data: Data) -> None:
    data["relay"]["client_limits"].update({"recipient_rate_limit": 11, "recipients_per_message": 3})
    lines = render(parse_site(data, "site.toml"))["relay/main.cf"].splitlines()
    assert "smtpd_client_recipient_rate_limit = 11" in lines
    assert "smtpd_recipient_limit = 3" in lines


def own_sender_reply(files: dict[str, str], sender: str) -> str | None:
    """What check_sender_access regexp:own_domains.regexp answers for sender (Postfix: first match, no case)."""
    for line in files["relay/own_domains.regexp"].splitlines():
        if line.startswith("/"):
            pattern, reply = line.split("  ", 1)
            assert pattern.startswith("/"), pattern
            assert pattern.endswith("/"), pattern
            if re.search(pattern[1:-1], sender, re.IGNORECASE):
                return reply
    return None


def own_from_domain_matches(files: dict[str, str], domain: str) -> bool:
    """Whether rspamd's OIGNONS_OWN_FROM map (regular expressions on the From: domain) matches domain."""
    conf = files["relay/rspamd-multimap.conf"]
    block = conf[conf.index("OIGNONS_OWN_FROM {") :]
    entries = re.search(r"map = \[(.*)\];", block)
    assert entries, block
    patterns = [json.loads(entry) for entry in re.findall(r'"(?:[^"\\]|\\.)*"', entries.group(1))]
    return any(re.search(pattern, domain) for pattern in patterns)


OWN_SENDERS = ("root@nos-oignons.net", "Root@Nos-Oignons.FR", "dons@bulbe.tetaneutral.net")
NODE_SENDERS = ("root@marcuse.nos-oignons.net", "cron@a.b.nos-oignons.fr")
NOT_OWN_SENDERS = ("root@evilnos-oignons.net", "root@nos-oignons.net.example.org", "x@nos-oignons.network")


def test_own_domains_are_refused_as_senders_from_outside(data: Data) -> None:
    files = render(parse_site(data, "site.toml"))
    for sender in OWN_SENDERS:
        assert (own_sender_reply(files, sender) or "").startswith("REJECT "), sender
        assert own_from_domain_matches(files, sender.partition("@")[2]), sender
    for sender in (*NODE_SENDERS, *NOT_OWN_SENDERS):
        assert own_sender_reply(files, sender) is None, sender
        assert not own_from_domain_matches(files, sender.partition("@")[2]), sender
    restrictions = next(line for line in files["relay/main.cf"].splitlines() if line.startswith("smtpd_sender_r"))
    assert restrictions.index("permit_tls_clientcerts") < restrictions.index("own_domains"), restrictions


def test_once_nodes_are_pinned_their_names_are_refused_from_outside_too(data: Data) -> None:
    data["relay"]["node_pins"] = {"marcuse": "ab" * 32}
    site = parse_site(data, "site.toml")
    assert site.relay.subdomain_senders == "pinned-nodes"
    files = render(site)
    for sender in (*OWN_SENDERS, *NODE_SENDERS):
        assert (own_sender_reply(files, sender) or "").startswith("REJECT "), sender
        assert own_from_domain_matches(files, sender.partition("@")[2]), sender
    for sender in NOT_OWN_SENDERS:
        assert own_sender_reply(files, sender) is None, sender
        assert not own_from_domain_matches(files, sender.partition("@")[2]), sender


def test_the_nodes_names_stay_open_while_a_site_says_anyone(data: Data) -> None:
    """A node the relay does not know is an outside client: root@marcuse.<domain> must still reach root's list."""
    data["relay"]["node_pins"] = {"marcuse": "ab" * 32}
    data["relay"]["subdomain_senders"] = "anyone"
    files = render(parse_site(data, "site.toml"))
    for sender in NODE_SENDERS:
        assert own_sender_reply(files, sender) is None, sender
        assert not own_from_domain_matches(files, sender.partition("@")[2]), sender
    assert (own_sender_reply(files, OWN_SENDERS[0]) or "").startswith("REJECT ")


@pytest.mark.parametrize(
    ("value", "pins", "rule"),
    [
        ("pinned-nodes", {}, "needs relay.node_pins"),
        ("pinned", {"marcuse": "ab" * 32}, "is not one of pinned-nodes, anyone"),
    ],
)
def test_subdomain_senders_is_checked(data: Data, value: str, pins: dict[str, str], rule: str) -> None:
    data["relay"]["node_pins"] = pins
    data["relay"]["subdomain_senders"] = value
    with pytest.raises(SiteError) as error:
        parse_site(data, "site.toml")
    assert "relay.subdomain_senders" in str(error.value), error.value
    assert rule in str(error.value), error.value


def test_list_command_addresses_are_refused_from_outside_but_schleuders_request(data: Data) -> None:
    table = render(parse_site(data, "site.toml"))["relay/list_commands.regexp"]
    rules = [line.split("  ", 1) for line in table.splitlines() if line.startswith("/")]
    patterns = [(re.compile(pattern.strip("/"), re.IGNORECASE), action) for pattern, action in rules]

    def action(address: str) -> str:
        return next((act for pattern, act in patterns if pattern.search(address)), "not found")

    assert action("machines-request@nos-oignons.net") == "DUNNO"
    for refused in ("machines-sendkey@nos-oignons.net", "discussion-request@nos-oignons.org",
                    "discussion-join+x@nos-oignons.org", "Discussion-Subscribe@nos-oignons.fr"):  # fmt: skip
        assert action(refused).startswith("550 5.7.1 "), refused
    for kept in ("discussion@nos-oignons.org", "discussion-leave@nos-oignons.org", "postmaster@nos-oignons.net"):
        assert action(kept) == "not found", kept


def test_rspamd_counts_only_mynetworks_as_local(data: Data) -> None:
    options = render(parse_site(data, "site.toml"))["relay/rspamd-options.inc"]
    assert 'local_addrs = ["127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128"];' in options.splitlines()


def ratelimit_rates(conf: str) -> dict[str, tuple[str, str]]:
    """rspamd's rates in local.d/ratelimit.conf: name -> (selector, bucket)."""
    found = re.findall(r'  (\w+) \{\n    selector = "(.*)";\n    bucket = \{ (.*) \}\n  \}', conf)
    return {name: (selector, bucket) for name, selector, bucket in found}


def list_answer_counted(selector: str, recipients: list[str]) -> bool:
    """Whether the selector's recipient part matches (rspamd: the addresses joined by commas, then the regexp)."""
    pattern = re.search(r"\.regexp\('/(.*)/'\)", selector)
    assert pattern, selector
    return re.search(pattern.group(1), ",".join(address.lower() for address in recipients)) is not None


@pytest.mark.parametrize(
    ("recipients", "counted"),
    [
        (["discussion-leave@nos-oignons.net"], True),
        (["Discussion-Unsubscribe@Nos-Oignons.ORG"], True),
        (["discussion-confirm+0123abcd@nos-oignons.fr"], True),
        (["postmaster@nos-oignons.net", "discussion-leave@nos-oignons.net"], True),
        (["discussion-leave@nos-oignons.net", "someone@example.org"], True),
        (["discussion@nos-oignons.net"], False),
        (["discussion-bounces+x=example.org@nos-oignons.net"], False),
        (["discussion-leave@example.org"], False),
        (["discussion-leave@nos-oignons.net.example.org"], False),
        (["discussion-leaves@nos-oignons.net"], False),
    ],
)
def test_mailmans_answers_are_counted_by_rspamd(data: Data, recipients: list[str], counted: bool) -> None:
    rates = ratelimit_rates(render(parse_site(data, "site.toml"))["relay/rspamd-ratelimit.conf"])
    assert set(rates) == {
        "oignons_list_answers_per_envelope_sender",
        "oignons_list_answers_per_from",
        "oignons_list_answers",
    }
    for selector, _ in rates.values():
        assert list_answer_counted(selector, recipients) is counted, (selector, recipients)


def test_mailmans_answers_are_bounded_per_sender_and_in_all(data: Data) -> None:
    conf = render(parse_site(data, "site.toml"))["relay/rspamd-ratelimit.conf"]
    rates = ratelimit_rates(conf)
    per_sender = render_module.LIST_ANSWERS_PER_SENDER_AN_HOUR
    in_all = render_module.LIST_ANSWERS_AN_HOUR
    assert rates["oignons_list_answers_per_envelope_sender"][0].startswith("from('smtp'):addr.lower;")
    assert rates["oignons_list_answers_per_from"][0].startswith("from('mime'):addr.lower;")
    # Distinct keys: two rates with the same key string would share one bucket.
    ids = [re.findall(r"\.id\('([^']+)'\)", selector) for selector, _ in rates.values()]
    assert sorted(ids) == [["envelope"], ["from"], ["oignons-list-answers"]], ids
    for name, (_, bucket) in rates.items():
        limit = in_all if name == "oignons_list_answers" else per_sender
        assert bucket == f'burst = {limit}; rate = "{limit} / 1h"; skip_recipients = true;', bucket
    lines = conf.splitlines()
    # rspamd's default exempts a message with postmaster@ among its recipients from every rate.
    assert 'whitelisted_rcpts = ["nobody@invalid"];' in lines
    for factor in ("ham_factor_rate", "spam_factor_rate", "ham_factor_burst", "spam_factor_burst"):
        assert f"{factor} = 1.0;" in lines


def test_misspelt_key_message(data: Data) -> None:
    error = parse_broken(data, rename("relay", "banner_suffix", "banner_sufix"))
    assert str(error) == (
        'site.toml: relay.banner_sufix = "Debian GNU/Oignons": unknown key\n  hint: did you mean `banner_suffix`?'
    )


def test_unknown_table_is_named_not_shown(data: Data) -> None:
    error = parse_broken(data, set_("zzz", {"a": 1}))
    assert str(error) == (
        "site.toml: zzz: unknown key\n  hint: known keys here: dkim, dns, fleet, package, relay, site, smarthost, tls"
    )


# -- the parser and schema.SCHEMA describe the same file ------------------------


def test_a_key_read_but_not_in_the_schema_is_a_programming_error() -> None:
    table = _Table("site.toml", "tls", {})
    with pytest.raises(LookupError, match=r"\[tls\] colour: read by site.py but not described in schema.SCHEMA"):
        table.optional_string("colour", non_empty)


def test_a_key_read_as_another_type_than_the_schema_s_is_a_programming_error() -> None:
    table = _Table("site.toml", "tls", {"loglevel": 1})
    with pytest.raises(LookupError, match=r"\[tls\] loglevel: read as a string, but schema.SCHEMA says a whole number"):
        table.string("loglevel")


def test_a_schema_key_the_parser_does_not_read_is_a_programming_error() -> None:
    table = _Table("site.toml", "package", {"maintainer": "M <m@example.org>", "organisation": "O", "homepage": "h"})
    table.optional_string("maintainer", non_empty)
    with pytest.raises(LookupError, match=r"\[package\] organisation, homepage: in schema.SCHEMA but not read"):
        table.finish()


def recipient_rewrite(table: str, address: str) -> str | None:
    """What cleanup's canonical lookup in recipient_extensions.regexp gives for an address (first rule that matches)."""
    for line in table.splitlines():
        if line.startswith("/"):
            pattern, result = line.split("  ", 1)
            found = re.search(pattern.strip("/"), address, re.IGNORECASE)
            if found:
                # Postfix's ${1} is Python's \1.
                return found.expand(re.sub(r"\$\{(\d)\}", r"\\\1", result))
    return None


def test_extensions_of_the_sites_addresses_are_merged_in_the_envelope(data: Data) -> None:
    files = render(parse_site(data, "site.toml"))
    table = files["relay/recipient_extensions.regexp"]
    for extended, plain in (("postmaster+0@nos-oignons.net", "postmaster@nos-oignons.net"),
                            ("dons+999@nos-oignons.net", "dons@nos-oignons.net"),
                            ("Root+a+b@NOS-OIGNONS.FR", "Root@NOS-OIGNONS.FR"),
                            ("machines+x@bulbe.tetaneutral.net", "machines@bulbe.tetaneutral.net")):  # fmt: skip
        assert recipient_rewrite(table, extended) == plain, extended
    # Mailman 3's extensions carry data; other domains and plain addresses are left alone.
    for kept in (
        "discussion-bounces+someone=example.org@nos-oignons.org",
        "discussion-confirm+0123abc@nos-oignons.org",
        "SRS0=HHHH=TT=example.org=user+tag@nos-oignons.net",
    ):
        assert recipient_rewrite(table, kept) == kept
    for untouched in ("postmaster@nos-oignons.net", "user+x@elsewhere.test", "root+x@marcuse.nos-oignons.net"):
        assert recipient_rewrite(table, untouched) is None, untouched
    settings = dict(line.split(" = ", 1) for line in files["relay/main.cf"].splitlines() if " = " in line)
    assert settings["enable_original_recipient"] == "no"  # the duplicate filter's key is the recipient alone
    # The map is the cleanup service's alone: in main.cf, smtpd would count every address it maps as known.
    assert "canonical_maps" not in settings
    (cleanup,) = [line for line in files["relay/master.cf"].splitlines() if line.startswith("-M cleanup/unix = ")]
    assert f"-o canonical_maps=regexp:{render_module.RECIPIENT_EXTENSIONS_FILE}" in cleanup
    assert "-o canonical_classes=envelope_recipient" in cleanup  # headers stay as signed


def test_another_delimiter_merges_nothing(data: Data) -> None:
    data["relay"]["recipient_delimiter"] = "-"
    files = render(parse_site(data, "site.toml"))
    assert "recipient_extensions" not in files["relay/main.cf"] + files["relay/master.cf"]
    assert "-M cleanup/unix" not in files["relay/master.cf"]
    assert recipient_rewrite(files["relay/recipient_extensions.regexp"], "machines-request@nos-oignons.net") is None
