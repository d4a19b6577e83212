"""What a site file may hold: every table and key, described once.

The parser (site.py) reads it to know which keys a table has (an unknown key
is refused, with the closest known one), what type each must have, and what
an absent optional key means; the manual page oignons-mail-site(5)
(manpage.py) is written from it.  The rules themselves are checked by
site.py's value checks; `rule` here says them in words for the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# The TOML types a key may have, as an error message names them ("must be a string");
# site.py refuses to read a key as another type than the one given here.
Kind = Literal["a string", "a whole number", "true or false", "a list of strings", "a table of strings"]

# The defaults the parser applies to optional keys (site.py reads these names).
RESPONDER_GLOBAL_RATE_LIMIT = 20
RESPONDER_GLOBAL_RATE_WINDOW = "1h"
RESPONDER_PROCESS_LIMIT = 4
RESPONDER_TIME_LIMIT = "120s"
DKIM_SELECTOR = "dkim"
DKIM_DEFAULT_KEY_BITS = 2048
DNS_TTL = 3600
DNS_SPF = "v=spf1 mx -all"
DNS_DMARC_POLICY = "none"


@dataclass(frozen=True)
class Key:
    """One key: its TOML type, what it is for, the rule its value follows, an example value (TOML)."""

    name: str
    kind: Kind
    doc: str
    rule: str
    example: str
    default: str = ""  # empty: the key is required; else what leaving it out means

    @property
    def required(self) -> bool:
        return not self.default


@dataclass(frozen=True)
class Table:
    """One table ([path]) or array of tables ([[path]]) and its keys."""

    path: str
    doc: str
    keys: tuple[Key, ...]
    array: bool = False
    optional: bool = False  # may be left out: every key then takes its default

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]


_DOMAIN = (
    "a domain name: lower-case labels of letters, digits and '-', at least two, no trailing dot; not an IP address"
)
_ADDRESS = "a mail address, local-part@domain, lower case"
_PATH = "an absolute path, without spaces or '..'"
_POSITIVE = "a whole number of at least 1"
_TIME = "a Postfix time: a whole number and an optional unit s, m, h, d or w, at least one second"
_ONE_LINE = "one line of text, not empty, without control characters"
_LIST = "a list without duplicates"

SCHEMA: tuple[Table, ...] = (
    Table(
        "site",
        "The association: its mail domain and where mail to root goes.",
        (
            Key(
                "domain",
                "a string",
                "The association's mail domain: mydomain of every node.",
                f"{_DOMAIN}; in relay.destinations",
                '"nos-oignons.net"',
            ),
            Key(
                "root_alias",
                "a string",
                "Where mail to root (and to users_to_root) ends up.",
                f"{_ADDRESS}; in relay.destinations unless relay.node_pins gives the nodes the right to relay",
                '"machines@nos-oignons.net"',
            ),
            Key(
                "users_to_root",
                "a list of strings",
                "System users whose mail goes to root.",
                f"{_LIST} of user names (lower case, starting with a letter or '_'), not empty, "
                "not root itself, none a responder local part",
                '["mailer-daemon", "postmaster", "nobody"]',
            ),
        ),
    ),
    Table(
        "tls",
        "Outbound TLS quality, for both roles.",
        (
            Key(
                "mandatory_protocols",
                "a string",
                "smtp_tls_mandatory_protocols; also bounds the relay's server side on ports 25 and 465.",
                "a Postfix TLS protocol list",
                '">=TLSv1.2"',
            ),
            Key(
                "exclude_ciphers",
                "a list of strings",
                "smtp_tls_exclude_ciphers.",
                f"{_LIST} of OpenSSL cipher names (letters, digits, '+' and '-'); may be empty",
                '["NULL", "MD5", "DES", "RC4"]',
            ),
            Key(
                "mandatory_ciphers",
                "a string",
                "smtp_tls_mandatory_ciphers.",
                "a Postfix cipher grade: high, medium, low, export or null",
                '"high"',
            ),
            Key("loglevel", "a whole number", "smtp_tls_loglevel.", "0 to 4", "1"),
            Key("note_starttls_offer", "true or false", "smtp_tls_note_starttls_offer.", "true or false", "true"),
        ),
    ),
    Table(
        "relay",
        "The main mail server: the MX of the association's domains and the nodes' smarthost.",
        (
            Key(
                "hostname",
                "a string",
                "myhostname of the relay.",
                f"{_DOMAIN}; in destinations",
                '"bulbe.nos-oignons.net"',
            ),
            Key("mydomain", "a string", "mydomain of the relay.", _DOMAIN, '"bulbe.nos-oignons.net"'),
            Key(
                "destinations",
                "a list of strings",
                "mydestination: the domains the relay delivers itself.",
                f"{_LIST} of domain names, not empty; holds site.domain",
                '["nos-oignons.net", "bulbe.nos-oignons.net"]',
            ),
            Key(
                "banner_suffix",
                "a string",
                "Shown after the host name in the SMTP greeting.",
                _ONE_LINE,
                '"Debian GNU/Oignons"',
            ),
            Key(
                "recipient_delimiter",
                "a string",
                "recipient_delimiter (user+extension).",
                "one punctuation character",
                '"+"',
            ),
            Key(
                "tls_cert_file",
                "a string",
                "The relay's certificate (PEM), on ports 25 and 465.",
                _PATH,
                '"/etc/ssl/certs/ssl-cert-snakeoil.pem"',
            ),
            Key("tls_key_file", "a string", "Its private key.", _PATH, '"/etc/ssl/private/ssl-cert-snakeoil.key"'),
            Key("rspamd_milter_socket", "a string", "rspamd's milter socket.", _PATH, '"/run/rspamd/milter.sock"'),
            Key(
                "mailman",
                "true or false",
                "Whether the relay has Mailman 3 lists: the relay package then recommends mailman3, and its"
                " description names them.",
                "true or false",
                "true",
                default="false: no Mailman lists, no mailman3 recommended",
            ),
            Key(
                "schleuder_lists",
                "a list of strings",
                "Schleuder lists delivered on the relay.",
                f"{_LIST} of mail addresses in destinations; may be empty",
                '["machines@nos-oignons.net"]',
            ),
            Key(
                "node_pins",
                "a table of strings",
                "Nodes that may relay to any address: node name = sha256 pin of its client certificate's "
                "public key (oignons-mail pin --cert).",
                "names are host name labels; pins are 64 hex digits, colons between bytes optional; may be empty",
                '{ marcuse = "48f86ca4aab2a59662d7108b68b5d96bafed93a36aa51c111ce9467de15655be" }',
            ),
            Key(
                "subdomain_senders",
                "a string",
                "Who may use a subdomain of the site's domains (a node's name, root@marcuse.example.org) as"
                ' envelope sender or in From:, from outside mynetworks: "pinned-nodes" (the nodes of'
                ' relay.node_pins; anyone else gets 554 5.7.1) or "anyone" (nodes without a pin included).'
                " The site's domains themselves are refused from outside either way.",
                '"pinned-nodes" or "anyone"; "pinned-nodes" needs relay.node_pins',
                '"pinned-nodes"',
                default='"pinned-nodes" when relay.node_pins names a node, "anyone" when it is empty',
            ),
            Key(
                "default_destination_concurrency_limit",
                "a whole number",
                "default_destination_concurrency_limit.",
                _POSITIVE,
                "10",
            ),
        ),
    ),
    Table(
        "relay.client_limits",
        "anvil(8) limits per SMTP client address, per minute.",
        (
            Key("connection_rate_limit", "a whole number", "smtpd_client_connection_rate_limit.", "1 to 10000", "100"),
            Key("message_rate_limit", "a whole number", "smtpd_client_message_rate_limit.", "1 to 10000", "100"),
            Key("connection_count_limit", "a whole number", "smtpd_client_connection_count_limit.", "1 to 10000", "10"),
            Key(
                "recipient_rate_limit",
                "a whole number",
                "RCPT commands a minute per outside client (smtpd_client_recipient_rate_limit): what one outside"
                " message to many +extensions can make at most.",
                "1 to 10000",
                "100",
                default="100",
            ),
            Key(
                "recipients_per_message",
                "a whole number",
                "Recipients of one message, for every client (smtpd_recipient_limit); Mailman 3 hands a post to"
                " Postfix for up to 500 members at once: keep it at least 500 on a relay with Mailman lists.",
                "1 to 10000",
                "500",
                default="500",
            ),
        ),
    ),
    Table(
        "relay.responder",
        "The donation auto-responder on the relay.",
        (
            Key(
                "local_parts",
                "a list of strings",
                "The addresses it answers, in every destination.",
                f"{_LIST} of local parts (lower-case letters, digits, '.', '_', '+', '-'), not empty; "
                "none an alias or a form of a Schleuder list",
                '["dons", "donate"]',
            ),
            Key(
                "from_address",
                "a string",
                "The From: of its replies.",
                f"{_ADDRESS}, in destinations",
                '"dons@nos-oignons.net"',
            ),
            Key("subject", "a string", "The Subject: of its replies.", _ONE_LINE, '"Donating to Nos oignons"'),
            Key(
                "iban",
                "a string",
                "The account to give to (filled into text as {iban}).",
                "an IBAN (ISO 13616) whose mod-97 check holds; spaces allowed",
                '"FR14 2004 1010 0505 0001 3M02 606"',
            ),
            Key("bic", "a string", "The bank's BIC ({bic}).", "8 or 11 upper-case letters and digits", '"PSSTFRPPPAR"'),
            Key("account_holder", "a string", "The account's holder ({account_holder}).", _ONE_LINE, '"Nos oignons"'),
            Key(
                "rate_limit",
                "a string",
                "At most one reply per sender (without +extension) in this time.",
                _TIME,
                '"7d"',
            ),
            Key(
                "global_rate_limit",
                "a whole number",
                "At most this many replies per global_rate_window, all senders together.",
                _POSITIVE,
                "20",
                str(RESPONDER_GLOBAL_RATE_LIMIT),
            ),
            Key(
                "global_rate_window",
                "a string",
                "The window of global_rate_limit.",
                _TIME,
                '"1h"',
                f'"{RESPONDER_GLOBAL_RATE_WINDOW}"',
            ),
            Key(
                "process_limit",
                "a whole number",
                "How many responders Postfix runs at once.",
                _POSITIVE,
                "4",
                str(RESPONDER_PROCESS_LIMIT),
            ),
            Key(
                "time_limit",
                "a string",
                "How long one responder may run.",
                _TIME,
                '"120s"',
                f'"{RESPONDER_TIME_LIMIT}"',
            ),
            Key(
                "text",
                "a string",
                "The reply's body.",
                "text with the placeholders {iban} (required), {bic} and {account_holder}; {{ and }} for braces",
                '"Our IBAN: {iban}"',
            ),
        ),
    ),
    Table(
        "relay.transports",
        "A throttled copy of the smtp transport for some destinations; one [[relay.transports]] each.",
        (
            Key(
                "name",
                "a string",
                "The master.cf service and the prefix of its main.cf parameters.",
                "lower-case letters and digits, starting with a letter; not a service of master.cf "
                "nor another transport's name",
                '"slow"',
            ),
            Key("process_limit", "a whole number", "Its master.cf process limit.", _POSITIVE, "5"),
            Key(
                "destinations",
                "a list of strings",
                "The domains it carries mail to.",
                f"{_LIST} of domain names, not empty; none of relay.destinations nor of another transport",
                '["orange.fr"]',
            ),
            Key(
                "initial_destination_concurrency",
                "a whole number",
                "NAME_initial_destination_concurrency.",
                _POSITIVE,
                "1",
                "Postfix's default",
            ),
            Key(
                "destination_concurrency_limit",
                "a whole number",
                "NAME_destination_concurrency_limit.",
                _POSITIVE,
                "2",
                "Postfix's default",
            ),
            Key(
                "destination_recipient_limit",
                "a whole number",
                "NAME_destination_recipient_limit.",
                _POSITIVE,
                "20",
                "Postfix's default",
            ),
            Key(
                "destination_rate_delay",
                "a string",
                "NAME_destination_rate_delay.",
                "a Postfix time: a whole number and an optional unit s, m, h, d or w",
                '"2s"',
                "Postfix's default",
            ),
        ),
        array=True,
    ),
    Table(
        "smarthost",
        "What every node needs to reach the relay.",
        (
            Key("fingerprint_digest", "a string", "The digest of relay_pins.", "sha1 or sha256", '"sha256"'),
            Key(
                "relay_pins",
                "a list of strings",
                "Pins of the relay's public key (oignons-mail pin --cert); several allow a key rotation.",
                f"{_LIST} of hex digests of fingerprint_digest's size, colons between bytes optional, not empty",
                '["8cb94c724c3e1fbbf47a5d73b72f566dc8ed6048171859cbc36b0bd4faab6c9e"]',
            ),
            Key(
                "tls_cert_file",
                "a string",
                "The client certificate a node presents to the relay.",
                _PATH,
                '"/etc/ssl/certs/ssl-cert-snakeoil.pem"',
            ),
            Key("tls_key_file", "a string", "Its private key.", _PATH, '"/etc/ssl/private/ssl-cert-snakeoil.key"'),
        ),
    ),
    Table(
        "package",
        "Who the Debian packages name.",
        (
            Key(
                "maintainer",
                "a string",
                "Maintainer of debian/control; default author of oignons-mail release.",
                '"Name <address>", one line',
                '"Nos oignons <contact@nos-oignons.net>"',
            ),
            Key(
                "organisation",
                "a string",
                "Named in the descriptions and debian/copyright.",
                _ONE_LINE,
                '"Nos oignons"',
            ),
            Key(
                "homepage",
                "a string",
                "Homepage of debian/control.",
                "an http or https address",
                '"https://nos-oignons.net/"',
            ),
        ),
    ),
    Table(
        "dkim",
        "DKIM signing by rspamd on the relay.",
        (
            Key(
                "selector",
                "a string",
                "The DKIM selector.",
                "one DNS label: letters, digits and '-'",
                '"bulbe1"',
                f'"{DKIM_SELECTOR}"',
            ),
            Key(
                "key_bits",
                "a whole number",
                "Size of the RSA keys made on the relay.",
                "1024, 2048, 3072 or 4096",
                "2048",
                str(DKIM_DEFAULT_KEY_BITS),
            ),
            Key(
                "domains",
                "a list of strings",
                "The signing domains.",
                f"{_LIST} of domain names in relay.destinations, not empty",
                '["nos-oignons.net"]',
                "[site.domain]",
            ),
        ),
        optional=True,
    ),
    Table(
        "dns",
        "What oignons-mail dns prints besides MX, DKIM and TLSA.",
        (
            Key("ttl", "a whole number", "TTL of the records, in seconds.", _POSITIVE, "3600", str(DNS_TTL)),
            Key(
                "spf",
                "a string",
                "The SPF record of each domain.",
                "starts with `v=spf1 `, one line, no quotes",
                '"v=spf1 mx -all"',
                f'"{DNS_SPF}"',
            ),
            Key(
                "dmarc_policy",
                "a string",
                "The DMARC policy (p=).",
                "none, quarantine or reject",
                '"none"',
                f'"{DNS_DMARC_POLICY}"',
            ),
            Key(
                "dmarc_rua",
                "a string",
                "Where DMARC aggregate reports go.",
                _ADDRESS,
                '"postmaster@nos-oignons.net"',
                '"postmaster@" site.domain',
            ),
            Key(
                "tlsrpt_rua",
                "a string",
                "Where TLS-RPT reports (RFC 8460) go: oignons-mail dns then prints an _smtp._tls record.",
                "a mail address, or an https: URI",
                '"tls-reports@nos-oignons.net"',
                "no _smtp._tls record",
            ),
            Key(
                "relay_addresses",
                "a list of strings",
                "The relay's public IPv4 and IPv6 addresses: oignons-mail dns prints their A/AAAA records and the"
                " PTR to ask the hosting provider for, and dns --check checks forward-confirmed reverse DNS.",
                "a list of IPv4 or IPv6 addresses others can reach (no loopback, link-local or multicast one)",
                '["192.0.2.25", "2001:db8::25"]',
                "no A/AAAA records printed, no reverse DNS checked",
            ),
        ),
        optional=True,
    ),
    Table(
        "fleet",
        "Fleet health: where the hosts' daily heartbeats go, and when `oignons-mail fleet` calls a host late.",
        (
            Key(
                "heartbeat_address",
                "a string",
                "The relay's address for heartbeats; only local programs and the nodes of relay.node_pins may send"
                " to it.",
                f"{_ADDRESS}, in a domain of relay.destinations, without the recipient delimiter, not an alias, list"
                " or responder address",
                '"heartbeat@nos-oignons.net"',
                '"heartbeat@" site.domain',
            ),
            Key(
                "late_after",
                "a string",
                "A host not heard from for longer is late.",
                _TIME,
                '"36h"',
                '"36h"',
            ),
            Key(
                "queue_after",
                "a string",
                "A host whose oldest deferred message is older is in state queue.",
                _TIME,
                '"4h"',
                '"4h"',
            ),
            Key(
                "nodes",
                "a list of strings",
                "The hosts expected to send heartbeats: listed as late until heard from.",
                f"{_LIST} of short host names (letters, digits and '-', at most 63); may be empty",
                '["marcuse", "ekumen"]',
                "[]: only the hosts heard from are listed",
            ),
        ),
        optional=True,
    ),
)

_TOP = Table("", "The top level.", ())
_BY_PATH = {table.path: table for table in (_TOP, *SCHEMA)}
# Looked up for every key read: computed once (a site file may hold 100,000 entries).
_CHILDREN = {path: tuple(t for t in SCHEMA if t.parent == path) for path in _BY_PATH}
_KNOWN = {
    path: tuple(key.name for key in table.keys) + tuple(t.name for t in _CHILDREN[path])
    for path, table in _BY_PATH.items()
}
_KEYS = {path: {key.name: key for key in table.keys} for path, table in _BY_PATH.items()}


def _plain(path: str) -> str:
    """A key path without its array indexes: relay.transports[0] -> relay.transports."""
    return re.sub(r"\[[0-9]+\]", "", path) if "[" in path else path


def table_schema(path: str) -> Table:
    """The table at a key path; array indexes ("relay.transports[0]") do not count."""
    return _BY_PATH[_plain(path)]


def child_tables(path: str) -> tuple[Table, ...]:
    """The tables directly inside the table at path ("" for the top level)."""
    return _CHILDREN[_plain(path)]


def known_names(path: str) -> tuple[str, ...]:
    """Every key and table a table may hold, in the order the schema lists them."""
    return _KNOWN[_plain(path)]


def key_schema(path: str, name: str) -> Key:
    key = _KEYS[_plain(path)].get(name)
    if key is None:
        raise LookupError(f"[{path}] {name}: read by site.py but not described in schema.SCHEMA")
    return key
