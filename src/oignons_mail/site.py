"""The site description: one TOML file, loaded into one frozen, typed model.

Every rule a value must follow is checked here, once; everything downstream
(rendering, packaging) may trust the model.  A broken file stops with a
`SiteError` that names the file, the key, the value and the rule.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import string
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

from oignons_mail import schema
from oignons_mail.errors import ABSENT, SiteError
from oignons_mail.schema import (
    DKIM_DEFAULT_KEY_BITS,
    DKIM_SELECTOR,
    DNS_DMARC_POLICY,
    DNS_SPF,
    DNS_TTL,
    RESPONDER_GLOBAL_RATE_LIMIT,
    RESPONDER_GLOBAL_RATE_WINDOW,
    RESPONDER_PROCESS_LIMIT,
    RESPONDER_TIME_LIMIT,
)

T = TypeVar("T")

# The site an installed relay speaks for: oignons-mail-relay installs its site
# file there (debian/rules), for `oignons-mail dns`, `validate` and `status`.
INSTALLED_RELAY_SITE = "/usr/share/oignons-mail-relay/site.toml"

Digest = Literal["sha1", "sha256"]
# Who may write as a subdomain of the site's domains (a node's name) from
# outside mynetworks (relay.subdomain_senders, docs/open-internet.md).
SubdomainSenders = Literal["pinned-nodes", "anyone"]
SUBDOMAIN_SENDERS: tuple[SubdomainSenders, ...] = ("pinned-nodes", "anyone")
# The forms of a Schleuder list address that reach Schleuder.
SCHLEUDER_SUFFIXES = ("", "-request", "-owner", "-bounce", "-sendkey")
DIGEST_BYTES: dict[str, int] = {"sha1": 20, "sha256": 32}


@dataclass(frozen=True)
class TlsPolicy:
    """Outbound TLS quality, shared by both roles."""

    mandatory_protocols: str
    exclude_ciphers: tuple[str, ...]
    mandatory_ciphers: str
    loglevel: int
    note_starttls_offer: bool


@dataclass(frozen=True)
class Transport:
    """A throttled copy of the smtp transport (wiki: "slow transports")."""

    name: str
    process_limit: int
    destinations: tuple[str, ...]
    initial_destination_concurrency: int | None
    destination_concurrency_limit: int | None
    destination_recipient_limit: int | None
    destination_rate_delay: str | None


@dataclass(frozen=True)
class Responder:
    """The donation auto-responder on the relay."""

    local_parts: tuple[str, ...]
    from_address: str
    subject: str
    iban: str  # grouped by four, as printed for people
    bic: str
    account_holder: str
    rate_limit_seconds: int  # per sender (its address without +extension)
    # At most global_rate_limit replies per global_rate_window_seconds, all
    # senders together: what a flood of forged senders can get at most.
    global_rate_limit: int
    global_rate_window_seconds: int
    # master.cf process limit and main.cf responder_time_limit.
    process_limit: int
    time_limit_seconds: int
    text: str  # placeholders already filled in


@dataclass(frozen=True)
class ClientLimits:
    """anvil(8) limits per SMTP client address, per minute (anvil_rate_time_unit)."""

    connection_rate_limit: int
    message_rate_limit: int
    connection_count_limit: int
    # RCPT commands a minute (smtpd_client_recipient_rate_limit) and
    # recipients of one message (smtpd_recipient_limit): what one outside
    # client can fan out into deliveries.
    recipient_rate_limit: int
    recipients_per_message: int


@dataclass(frozen=True)
class Relay:
    """The main mail server (bulbe)."""

    hostname: str
    mydomain: str
    destinations: tuple[str, ...]
    banner_suffix: str
    recipient_delimiter: str
    tls_cert_file: str
    tls_key_file: str
    rspamd_milter_socket: str
    schleuder_lists: tuple[str, ...]
    # Tor nodes that may relay to any address, by the sha256 pin of their
    # TLS client certificate's public key: ((node, pin), ...).
    node_pins: tuple[tuple[str, str], ...]
    # "pinned-nodes": an outside client (not mynetworks, no pinned
    # certificate) may not use a subdomain of the site's domains as envelope
    # sender or in From:; "anyone": it may (nodes without a pin).
    subdomain_senders: SubdomainSenders
    default_destination_concurrency_limit: int
    client_limits: ClientLimits
    responder: Responder
    transports: tuple[Transport, ...]
    # Mailman 3 lists on the relay (relay.mailman, default false): the relay
    # package then recommends mailman3 and its description names them.
    mailman: bool = False


@dataclass(frozen=True)
class Smarthost:
    """What every Tor node needs to reach the relay."""

    fingerprint_digest: Digest
    relay_pins: tuple[str, ...]  # lower-case hex, colon-separated bytes
    # The client certificate a node presents to the relay.
    tls_cert_file: str
    tls_key_file: str


@dataclass(frozen=True)
class Package:
    """Who the Debian packages name: their maintainer, the organisation, its web site."""

    maintainer: str  # "Name <address>", as debian/control and debian/changelog want it
    organisation: str
    homepage: str


@dataclass(frozen=True)
class Dkim:
    """DKIM signing by rspamd on the relay ([dkim], optional)."""

    selector: str
    key_bits: int
    domains: tuple[str, ...]  # signing domains: each gets a key per selector


@dataclass(frozen=True)
class Dns:
    """What `oignons-mail dns` publishes besides MX, DKIM and TLSA ([dns], optional)."""

    ttl: int
    spf: str
    dmarc_policy: str
    dmarc_rua: str
    # RFC 8460 reports of failed TLS to the site's domains: a mail address or an
    # https: URI; None: no _smtp._tls record.
    tlsrpt_rua: str | None = None
    # The relay's public addresses (A/AAAA of relay.hostname, each with its PTR).
    relay_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fleet:
    """Fleet health ([fleet], optional): where heartbeats go, when a host counts as late."""

    heartbeat_address: str  # on the relay; only local programs and the nodes may send to it
    late_after_seconds: int  # `oignons-mail fleet`: not heard from for longer: late
    queue_after_seconds: int  # deferred mail older than this: queue
    nodes: tuple[str, ...]  # hosts expected to send heartbeats (late until heard from)


@dataclass(frozen=True)
class Site:
    """One association's mail setup, for both roles."""

    source: str
    domain: str
    root_alias: str
    users_to_root: tuple[str, ...]
    tls: TlsPolicy
    relay: Relay
    smarthost: Smarthost
    package: Package
    dkim: Dkim
    dns: Dns
    fleet: Fleet


class RuleError(Exception):
    """Raised by a value check; the loader adds the file, key and value."""

    def __init__(self, rule: str, hint: str = "") -> None:
        super().__init__(rule)
        self.rule = rule
        self.hint = hint


# -- value checks: value in, normalised value out, RuleError on failure ------

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"{_LABEL}(\.{_LABEL})+")
_LABEL_RE = re.compile(_LABEL)
_LOCAL_PART_RE = re.compile(r"[a-z0-9][a-z0-9._+-]*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]*")
_POSTFIX_TIME_RE = re.compile(r"([0-9]+)([smhdw]?)")
_TIME_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PROTOCOL = r"(SSLv2|SSLv3|TLSv1|TLSv1\.1|TLSv1\.2|TLSv1\.3)"
_PROTOCOLS_RE = re.compile(rf"([<>]={_PROTOCOL}|!?{_PROTOCOL})(\s*[,\s]\s*([<>]={_PROTOCOL}|!?{_PROTOCOL}))*")
_CIPHER_GRADES = ("high", "medium", "low", "export", "null")
_IBAN_RE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
_BIC_RE = re.compile(r"[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?")
# No '-': the name starts main.cf parameter names (slow_destination_rate_delay).
_TRANSPORT_RE = re.compile(r"[a-z][a-z0-9]*")
# Services of Debian's master.cf: a transport of the site may not replace one.
_STOCK_SERVICES = frozenset(
    (
        "smtp submission submissions smtps pickup cleanup qmgr tlsmgr rewrite bounce defer trace verify "
        "flush proxymap proxywrite relay showq error retry discard local virtual lmtp anvil scache postlog "
        "maildrop uucp ifmail bsmtp scalemail-backend mailman schleuder responder default"
    ).split()
)


def domain_name(value: str) -> str:
    if _is_ip_address(value):
        raise RuleError(
            "is an IP address, not a host or domain name (Postfix looks a name up in the DNS here)",
            "write the name, e.g. bulbe.nos-oignons.net",
        )
    if not _DOMAIN_RE.fullmatch(value) or len(value) > 253:
        raise RuleError(
            "not a domain name (lower-case labels of letters, digits and '-', at least two labels)",
            "write it like nos-oignons.net, without a trailing dot",
        )
    return value


def _is_ip_address(value: str) -> bool:
    """An IPv4 or IPv6 address, bracketed or not: a digits-only last label is never a DNS name's."""
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return value.rpartition(".")[2].isdigit()
    return True


def host_label(value: str) -> str:
    if not _LABEL_RE.fullmatch(value):
        raise RuleError(
            "not a host name label (letters, digits and '-', at most 63)", "the node's short host name, e.g. marcuse"
        )
    return value


def mail_address(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL_PART_RE.fullmatch(local):
        raise RuleError("not a mail address (local-part@domain, lower case)", "e.g. machines@nos-oignons.net")
    domain_name(domain)
    return value


def local_part(value: str) -> str:
    if not _LOCAL_PART_RE.fullmatch(value):
        raise RuleError(
            "not the local part of an address (lower-case letters, digits, '.', '_', '+', '-')",
            "the part before the @, in lower case, e.g. dons",
        )
    return value


def user_name(value: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise RuleError(
            "not a user or alias name (lower case, starting with a letter or '_')", "as in /etc/passwd, e.g. www-data"
        )
    return value


def absolute_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value) or "/../" in value + "/":
        raise RuleError("not an absolute path without spaces or '..'", 'e.g. "/etc/ssl/certs/ssl-cert-snakeoil.pem"')
    return value


def postfix_time(value: str) -> str:
    """A Postfix time value (postconf(5): a number with an optional s/m/h/d/w unit)."""
    if not _POSTFIX_TIME_RE.fullmatch(value):
        raise RuleError("not a Postfix time (a whole number and an optional unit s, m, h, d or w)", 'e.g. "2s"')
    return value


def postfix_time_seconds(value: str) -> int:
    match = _POSTFIX_TIME_RE.fullmatch(postfix_time(value))
    assert match is not None
    return int(match.group(1)) * _TIME_UNIT_SECONDS[match.group(2)]


def positive_time(value: str) -> str:
    if postfix_time_seconds(value) < 1:
        raise RuleError("must be a Postfix time of at least one second", 'e.g. "7d"')
    return value


def tls_protocols(value: str) -> str:
    if not _PROTOCOLS_RE.fullmatch(value.strip()):
        raise RuleError(
            "not a Postfix TLS protocol list",
            'use ">=TLSv1.2" (Postfix >= 3.6) or a list such as "!SSLv2, !SSLv3, !TLSv1"',
        )
    return value


def cipher_grade(value: str) -> str:
    if value not in _CIPHER_GRADES:
        raise RuleError(
            f"not a Postfix cipher grade (one of {', '.join(_CIPHER_GRADES)})", '"high" for mail between the sites'
        )
    return value


def subdomain_senders_name(value: str) -> SubdomainSenders:
    if value not in SUBDOMAIN_SENDERS:
        raise RuleError(
            f"is not one of {', '.join(SUBDOMAIN_SENDERS)}",
            '"pinned-nodes" once every node is in relay.node_pins, "anyone" before',
        )
    return value


def digest_name(value: str) -> Digest:
    if value not in DIGEST_BYTES:
        raise RuleError(
            "not a supported fingerprint digest (sha1 or sha256)", 'write "sha256" (or "sha1"), in lower case'
        )
    return cast(Digest, value)


def fingerprint(value: str, digest: str) -> str:
    """A digest in hex, bytes optionally separated by colons; normalised to aa:bb:..."""
    hexdigits = value.replace(":", "").lower()
    size = DIGEST_BYTES[digest]
    if (
        not re.fullmatch(r"[0-9a-f]*", hexdigits)
        or len(hexdigits) != 2 * size
        or (":" in value and not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})*", value))
    ):
        raise RuleError(
            f"not hex of a {digest} digest ({size} bytes: {2 * size} hex digits, colons between bytes optional)",
            "compute it on the relay with `oignons-mail pin --cert CERT.pem`",
        )
    return ":".join(hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2))


def iban(value: str) -> str:
    """An IBAN (ISO 13616): mod-97 check; returned grouped by four."""
    compact = value.replace(" ", "").upper()
    if not _IBAN_RE.fullmatch(compact):
        raise RuleError(
            "not an IBAN (country code, two check digits, up to 30 letters or digits)",
            'as the bank prints it, e.g. "FR14 2004 1010 0505 0001 3M02 606"',
        )
    rearranged = compact[4:] + compact[:4]
    if int("".join(str(int(c, 36)) for c in rearranged)) % 97 != 1:
        raise RuleError("not a valid IBAN: the mod-97 check fails (ISO 7064)", "a digit is probably mistyped")
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def bic(value: str) -> str:
    if not _BIC_RE.fullmatch(value):
        raise RuleError(
            "not a BIC (8 or 11 upper-case letters and digits)", 'as the bank prints it, e.g. "PSSTFRPPPAR"'
        )
    return value


def transport_name(value: str) -> str:
    if not _TRANSPORT_RE.fullmatch(value):
        raise RuleError(
            "not a transport name (lower-case letters and digits, starting with a letter)", "e.g. slow or yahoo"
        )
    if value in _STOCK_SERVICES:
        raise RuleError("names a service that master.cf already has", "choose another name, e.g. slow")
    return value


def positive(value: int) -> int:
    if value < 1:
        raise RuleError("must be a whole number of at least 1", "write 1 or more")
    return value


# More than this many connections or messages a minute from one address is
# a flood whatever the site: a larger value is a typo.
MAX_CLIENT_LIMIT = 10000


def client_limit(value: int) -> int:
    if not 1 <= value <= MAX_CLIENT_LIMIT:
        raise RuleError(
            f"must be a whole number from 1 to {MAX_CLIENT_LIMIT}",
            "a limit per client address and minute; Postfix's 0 (no limit) is not offered",
        )
    return value


def tls_loglevel(value: int) -> int:
    if not 0 <= value <= 4:
        raise RuleError("not a Postfix TLS log level (0 to 4)", "1 logs a summary of each TLS handshake (postconf(5))")
    return value


def non_empty(value: str) -> str:
    if not value.strip():
        raise RuleError("must not be empty", "write some text, or leave the key out if it is optional")
    return value


def one_line(value: str) -> str:
    """Text that goes into a main.cf value or a mail header: one line, no control character."""
    non_empty(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise RuleError("must be one line of text, without control characters", "remove the line break or tab")
    return value


def cipher_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9+-]+", value):
        raise RuleError("not an OpenSSL cipher name (letters, digits, '+' and '-')", 'e.g. "RC4"')
    return value


_MAINTAINER_RE = re.compile(r"([^<>,]+?) <([^<>@\s]+@[^<>@\s]+)>")


def maintainer(value: str) -> str:
    """A Debian maintainer field: "Name <address>" (Debian Policy 5.6.2)."""
    match = _MAINTAINER_RE.fullmatch(one_line(value))
    if match is None:
        raise RuleError('not a maintainer: "Name <address>"', 'e.g. "Nos oignons <contact@nos-oignons.net>"')
    mail_address(match.group(2).lower())
    return value


def web_address(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise RuleError("not an http(s) address", 'e.g. "https://nos-oignons.net/"')
    return value


def milter_socket(value: str) -> str:
    absolute_path(value)
    return value


# -- the reader: walks the TOML tables, remembers which keys were used --------


class _Table:
    """One table of the file; its keys are known from schema.SCHEMA, an unknown one is refused at once."""

    def __init__(self, file: str, path: str, data: dict[str, object]) -> None:
        self.file = file
        self.path = path
        self.data = data
        self.used: set[str] = set()
        self._refuse_unknown_keys()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, value: object, rule: str, hint: str = "") -> SiteError:
        return SiteError(self.file, self.key(name), value, rule, hint)

    def _refuse_unknown_keys(self) -> None:
        """Before any key is read: a misspelt key is unknown, not its right spelling missing."""
        known = schema.known_names(self.path)
        for name in self.data:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"known keys here: {', '.join(sorted(known))}"
                value = self.data[name]
                # A table is not shown: its header names it, its keys would fill the screen.
                raise self.error(name, ABSENT if isinstance(value, dict) else value, "unknown key", hint)

    def _example(self, name: str, kind_name: str = "") -> str:
        """How the key is written, for a hint: `name = example`, or its table's header.

        With kind_name, the type the parser reads the key as must be the schema's (and the manual page's).
        """
        for table in schema.child_tables(self.path):
            if table.name == name:
                return f"[[{table.path}]]" if table.array else f"[{table.path}]"
        key = schema.key_schema(self.path, name)
        if kind_name and key.kind != kind_name:
            raise LookupError(f"[{self.path}] {name}: read as {kind_name}, but schema.SCHEMA says {key.kind}")
        return f"{name} = {key.example}"

    def _raw(self, name: str, kind: type, kind_name: str, optional: bool) -> object:
        self.used.add(name)
        example = self._example(name, kind_name)
        if name not in self.data:
            if optional:
                return None
            if kind is dict and example.startswith("["):
                hint = f"add a {example} table"
            else:
                hint = f"add `{example}` to [{self.path}]" if self.path else f"add `{example}` at the top"
            raise self.error(name, ABSENT, "missing", hint)
        value = self.data[name]
        # bool is an int in Python; TOML keeps them apart, so must we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            hint = f"write it as a {example} table" if example.startswith("[") else f"e.g. {example}"
            raise self.error(name, value, f"must be {kind_name}", hint)
        return value

    def _check(self, name: str, value: T, check: Callable[[T], T]) -> T:
        try:
            return check(value)
        except RuleError as broken:
            raise self.error(name, value, broken.rule, broken.hint) from None

    def string(self, name: str, check: Callable[[str], str] = non_empty) -> str:
        return self._check(name, cast(str, self._raw(name, str, "a string", False)), check)

    def optional_string(self, name: str, check: Callable[[str], str]) -> str | None:
        value = self._raw(name, str, "a string", True)
        return None if value is None else self._check(name, cast(str, value), check)

    def integer(self, name: str, check: Callable[[int], int] = positive) -> int:
        return self._check(name, cast(int, self._raw(name, int, "a whole number", False)), check)

    def optional_integer(self, name: str, check: Callable[[int], int] = positive) -> int | None:
        value = self._raw(name, int, "a whole number", True)
        return None if value is None else self._check(name, cast(int, value), check)

    def boolean(self, name: str) -> bool:
        return cast(bool, self._raw(name, bool, "true or false", False))

    def optional_boolean(self, name: str, default: bool) -> bool:
        value = self._raw(name, bool, "true or false", True)
        return default if value is None else cast(bool, value)

    def strings(self, name: str, check: Callable[[str], str], allow_empty: bool = False) -> tuple[str, ...]:
        values = cast(list[object], self._raw(name, list, "a list of strings", False))
        if not values and not allow_empty:
            raise self.error(
                name, values, "must not be an empty list", f"list at least one, e.g. {self._example(name)}"
            )
        result: list[str] = []
        seen: set[str] = set()  # a set: a list's `in` made 300,000 entries take minutes
        for index, item in enumerate(values):
            item_key = f"{name}[{index}]"
            if not isinstance(item, str):
                raise self.error(item_key, item, "must be a string", f"quote it, e.g. {self._example(name)}")
            normalised = self._check(item_key, item, check)
            if normalised in seen:
                first = result.index(normalised)
                raise self.error(item_key, item, "is listed twice", f"remove it: {name}[{first}] is the same")
            seen.add(normalised)
            result.append(normalised)
        return tuple(result)

    def mapping(
        self, name: str, check_key: Callable[[str], str], check_value: Callable[[str], str]
    ) -> tuple[tuple[str, str], ...]:
        """An inline table of strings ({ name = "value", ... }), as sorted pairs."""
        values = cast(dict[str, object], self._raw(name, dict, "a table of strings", False))
        result = []
        for key, value in sorted(values.items()):
            item_key = f"{name}.{key}"
            self._check(item_key, key, check_key)
            if not isinstance(value, str):
                raise self.error(item_key, value, "must be a string", f"quote it, e.g. {self._example(name)}")
            result.append((key, self._check(item_key, value, check_value)))
        return tuple(result)

    def table(self, name: str) -> _Table:
        return _Table(self.file, self.key(name), cast(dict[str, object], self._raw(name, dict, "a table", False)))

    def tables(self, name: str) -> Iterator[_Table]:
        values = cast(list[object], self._raw(name, list, "an array of tables ([[...]])", False))
        for index, item in enumerate(values):
            if not isinstance(item, dict):
                raise self.error(
                    f"{name}[{index}]", item, "must be a table", f"write each as a {self._example(name)} table"
                )
            yield _Table(self.file, f"{self.key(name)}[{index}]", cast(dict[str, object], item))

    def finish(self) -> None:
        """Every key of the table was read: a key the schema describes must not be ignored by the parser."""
        unread = [name for name in self.data if name not in self.used]
        if unread:
            raise LookupError(f"[{self.path}] {', '.join(unread)}: in schema.SCHEMA but not read by site.py")


# -- loading ------------------------------------------------------------------


_BOM = "\ufeff"


def load_site(path: Path) -> Site:
    """Read and validate a site file."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        if text.startswith(_BOM):
            raise SiteError(
                file,
                "",
                ABSENT,
                "starts with a UTF-8 byte order mark (BOM, bytes EF BB BF), which TOML does not allow",
                f"save it as UTF-8 without a BOM, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {file}",
            )
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise SiteError(file, "", ABSENT, "no such file", "copy sites/nos-oignons.toml and edit it") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SiteError(file, "", ABSENT, f"cannot be read: {error}", "save it as UTF-8, readable by you") from None
    except tomllib.TOMLDecodeError as error:
        raise SiteError(
            file, "", ABSENT, f"is not valid TOML: {error}", "see https://toml.io/ for the syntax"
        ) from None
    return parse_site(data, file)


def parse_site(data: dict[str, object], file: str) -> Site:
    """Validate the parsed TOML of a site file into the model."""
    top = _Table(file, "", data)
    site_table = top.table("site")
    domain = site_table.string("domain", domain_name)
    root_alias = site_table.string("root_alias", mail_address)
    users_to_root = site_table.strings("users_to_root", user_name)
    if "root" in users_to_root:
        raise site_table.error(
            f"users_to_root[{users_to_root.index('root')}]",
            "root",
            "must not list root itself (a mail loop)",
            "remove it: root's mail goes to site.root_alias",
        )
    site_table.finish()

    tls = _parse_tls(top.table("tls"))
    relay = _parse_relay(top.table("relay"))
    smarthost = _parse_smarthost(top.table("smarthost"))
    package = _parse_package(top.table("package"))
    dkim = _parse_dkim(_optional_table(top, "dkim"), domain, relay.destinations)
    dns = _parse_dns(_optional_table(top, "dns"), domain)
    fleet_table = _optional_table(top, "fleet")
    top.finish()

    _refuse_shared_local_parts(file, relay, users_to_root)
    _refuse_undeliverable(file, domain, root_alias, relay)
    fleet = _parse_fleet(fleet_table, domain, relay, users_to_root)
    return Site(
        source=file,
        domain=domain,
        root_alias=root_alias,
        users_to_root=users_to_root,
        tls=tls,
        relay=relay,
        smarthost=smarthost,
        package=package,
        dkim=dkim,
        dns=dns,
        fleet=fleet,
    )


def _parse_package(table: _Table) -> Package:
    package = Package(
        maintainer=table.string("maintainer", maintainer),
        organisation=table.string("organisation", one_line),
        homepage=table.string("homepage", web_address),
    )
    table.finish()
    return package


def _refuse_shared_local_parts(file: str, relay: Relay, users_to_root: tuple[str, ...]) -> None:
    """A responder address must not also be an alias or a Schleuder list: one would hide the other."""
    taken = _taken_local_parts(relay, users_to_root)
    for index, local in enumerate(relay.responder.local_parts):
        if local in taken:
            raise SiteError(
                file,
                f"relay.responder.local_parts[{index}]",
                local,
                f"is also {taken[local]}",
                "give the responder another local part",
            )


def _taken_local_parts(relay: Relay, users_to_root: tuple[str, ...]) -> dict[str, str]:
    """The local parts the aliases and the Schleuder lists use, each with what uses it."""
    taken = dict.fromkeys((*users_to_root, "root"), "an alias (site.users_to_root)")
    for address in relay.schleuder_lists:
        local = address.partition("@")[0]
        taken.update({local + suffix: f"a form of the Schleuder list {address}" for suffix in SCHLEUDER_SUFFIXES})
    return taken


def _refuse_undeliverable(file: str, domain: str, root_alias: str, relay: Relay) -> None:
    """Refuse a site whose relay would turn away the nodes' own mail."""
    if domain not in relay.destinations:
        raise SiteError(
            file,
            "site.domain",
            domain,
            "is not in relay.destinations: the relay would refuse mail for the site's own domain "
            "(postmaster@, root@ of the nodes)",
            f'add "{domain}" to relay.destinations',
        )
    alias_domain = root_alias.rpartition("@")[2]
    if alias_domain not in relay.destinations and not relay.node_pins:
        raise SiteError(
            file,
            "site.root_alias",
            root_alias,
            "is outside relay.destinations while relay.node_pins is empty: the nodes may not relay, "
            "so the relay would refuse every node's mail to root",
            "use an address in relay.destinations, or give the nodes the right to relay in relay.node_pins",
        )


def _parse_tls(table: _Table) -> TlsPolicy:
    policy = TlsPolicy(
        mandatory_protocols=table.string("mandatory_protocols", tls_protocols),
        exclude_ciphers=table.strings("exclude_ciphers", cipher_name, allow_empty=True),
        mandatory_ciphers=table.string("mandatory_ciphers", cipher_grade),
        loglevel=table.integer("loglevel", tls_loglevel),
        note_starttls_offer=table.boolean("note_starttls_offer"),
    )
    table.finish()
    return policy


def _parse_relay(table: _Table) -> Relay:
    hostname = table.string("hostname", domain_name)
    destinations = table.strings("destinations", domain_name)
    schleuder_lists = table.strings("schleuder_lists", mail_address, allow_empty=True)
    known = frozenset(destinations)  # a set: linear time however long both lists are
    for index, address in enumerate(schleuder_lists):
        if address.rpartition("@")[2] not in known:
            raise table.error(
                f"schleuder_lists[{index}]",
                address,
                "is not in a domain of relay.destinations",
                "the relay accepts mail only for its destinations",
            )
    if hostname not in destinations:
        raise table.error("hostname", hostname, "is not in relay.destinations", "mail to root@<relay> must be accepted")
    delimiter = table.string("recipient_delimiter")
    # The responder's rule too (tests/unit/test_contract.py): "@" and "." split no address extension.
    if len(delimiter) != 1 or delimiter.isalnum() or delimiter.isspace() or delimiter in "@.":
        raise table.error(
            "recipient_delimiter", delimiter, "must be one punctuation character", 'e.g. "+", not "@" or "."'
        )
    node_pins = table.mapping("node_pins", host_label, lambda pin: fingerprint(pin, "sha256"))
    relay = Relay(
        hostname=hostname,
        mydomain=table.string("mydomain", domain_name),
        destinations=destinations,
        banner_suffix=table.string("banner_suffix", one_line),
        recipient_delimiter=delimiter,
        tls_cert_file=table.string("tls_cert_file", absolute_path),
        tls_key_file=table.string("tls_key_file", absolute_path),
        rspamd_milter_socket=table.string("rspamd_milter_socket", milter_socket),
        schleuder_lists=schleuder_lists,
        node_pins=node_pins,
        subdomain_senders=_parse_subdomain_senders(table, node_pins),
        default_destination_concurrency_limit=table.integer("default_destination_concurrency_limit"),
        client_limits=_parse_client_limits(table.table("client_limits")),
        responder=_parse_responder(table.table("responder"), destinations),
        transports=_parse_transports(table, destinations),
        mailman=table.optional_boolean("mailman", default=False),
    )
    table.finish()
    return relay


def _parse_subdomain_senders(table: _Table, node_pins: tuple[tuple[str, str], ...]) -> SubdomainSenders:
    """Default: "pinned-nodes" as soon as the relay knows a node by its certificate, "anyone" before."""
    value = table.optional_string("subdomain_senders", subdomain_senders_name)
    if value is None:
        return "pinned-nodes" if node_pins else "anyone"
    if value == "pinned-nodes" and not node_pins:
        raise table.error(
            "subdomain_senders",
            value,
            "needs relay.node_pins: with no node pinned, every node is an outside client",
            "pin the nodes first (README, step 6), or leave the key out",
        )
    return cast(SubdomainSenders, value)


def _parse_client_limits(table: _Table) -> ClientLimits:
    limits = ClientLimits(
        connection_rate_limit=table.integer("connection_rate_limit", client_limit),
        message_rate_limit=table.integer("message_rate_limit", client_limit),
        connection_count_limit=table.integer("connection_count_limit", client_limit),
        recipient_rate_limit=_or_default(
            table.optional_integer("recipient_rate_limit", client_limit), CLIENT_RECIPIENT_RATE_LIMIT
        ),
        recipients_per_message=_or_default(
            table.optional_integer("recipients_per_message", client_limit), CLIENT_RECIPIENTS_PER_MESSAGE
        ),
    )
    table.finish()
    return limits


# [relay.client_limits]'s defaults for the keys a site may leave out: a real
# sender writes to a few of the relay's addresses at once; a guesser or an
# amplifier (one message to postmaster+0 ... postmaster+999) to hundreds.
# smtpd_recipient_limit holds for local programs too: Mailman 3 sends a post
# to up to 500 members in one transaction ([mta] max_recipients).
CLIENT_RECIPIENT_RATE_LIMIT = 100
CLIENT_RECIPIENTS_PER_MESSAGE = 500


# The responder's defaults when [relay.responder] leaves them out (docs/administration.md,
# "The donation responder"): 20 replies an hour in all is plenty for donors
# and little backscatter; a few processes and two minutes (one SMTP timeout
# plus one lock wait) bound what a flood of messages can take from the host.
# They are schema.py's, which the manual page shows.


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def _parse_responder(table: _Table, destinations: tuple[str, ...]) -> Responder:
    from_address = table.string("from_address", mail_address)
    if from_address.rpartition("@")[2] not in destinations:
        raise table.error(
            "from_address",
            from_address,
            "is not in a domain of relay.destinations",
            "replies must come from an address the relay receives mail for",
        )
    fields = {
        "iban": table.string("iban", iban),
        "bic": table.string("bic", bic),
        "account_holder": table.string("account_holder", one_line),
    }
    template = table.string("text")
    text = _fill_placeholders(table, "text", template, fields)
    responder = Responder(
        local_parts=table.strings("local_parts", local_part),
        from_address=from_address,
        subject=table.string("subject", one_line),
        iban=fields["iban"],
        bic=fields["bic"],
        account_holder=fields["account_holder"],
        rate_limit_seconds=postfix_time_seconds(table.string("rate_limit", positive_time)),
        global_rate_limit=_or_default(table.optional_integer("global_rate_limit"), RESPONDER_GLOBAL_RATE_LIMIT),
        global_rate_window_seconds=postfix_time_seconds(
            table.optional_string("global_rate_window", positive_time) or RESPONDER_GLOBAL_RATE_WINDOW
        ),
        process_limit=_or_default(table.optional_integer("process_limit"), RESPONDER_PROCESS_LIMIT),
        time_limit_seconds=postfix_time_seconds(
            table.optional_string("time_limit", positive_time) or RESPONDER_TIME_LIMIT
        ),
        text=text.strip("\n") + "\n",
    )
    table.finish()
    return responder


def _fill_placeholders(table: _Table, key: str, template: str, fields: dict[str, str]) -> str:
    """str.format, restricted to plain {name} fields of `fields`; {iban} required."""
    known = ", ".join(f"{{{name}}}" for name in fields)
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise table.error(key, template, f"has a broken placeholder ({error})", f"known: {known}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            raise table.error(key, template, f"has an unknown placeholder {{{name}}}", f"known: {known}")
        names.append(name)
    if "iban" not in names:
        raise table.error(key, template, "must contain the placeholder {iban}", "the reply is for the IBAN")
    return template.format(**fields)


def _parse_transports(relay_table: _Table, relay_destinations: tuple[str, ...]) -> tuple[Transport, ...]:
    transports: list[Transport] = []
    seen_destinations: set[str] = set()
    names: set[str] = set()
    relay_set = frozenset(relay_destinations)
    for table in relay_table.tables("transports"):
        transport = Transport(
            name=table.string("name", transport_name),
            process_limit=table.integer("process_limit"),
            destinations=table.strings("destinations", domain_name),
            initial_destination_concurrency=table.optional_integer("initial_destination_concurrency"),
            destination_concurrency_limit=table.optional_integer("destination_concurrency_limit"),
            destination_recipient_limit=table.optional_integer("destination_recipient_limit"),
            destination_rate_delay=table.optional_string("destination_rate_delay", postfix_time),
        )
        if transport.name in names:
            raise table.error("name", transport.name, "is the name of another transport", "give each its own name")
        for index, destination in enumerate(transport.destinations):
            if destination in relay_set:
                raise table.error(
                    f"destinations[{index}]",
                    destination,
                    "is a destination of the relay itself (a mail loop)",
                    "remove it: the relay delivers its own domains",
                )
            if destination in seen_destinations:
                raise table.error(
                    f"destinations[{index}]",
                    destination,
                    "is routed by another transport already",
                    "list each destination in one transport only",
                )
            seen_destinations.add(destination)
        table.finish()
        names.add(transport.name)
        transports.append(transport)
    return tuple(transports)


def _parse_smarthost(table: _Table) -> Smarthost:
    digest = table.string("fingerprint_digest", digest_name)
    smarthost = Smarthost(
        fingerprint_digest=cast(Digest, digest),
        relay_pins=table.strings("relay_pins", lambda pin: fingerprint(pin, digest)),
        tls_cert_file=table.string("tls_cert_file", absolute_path),
        tls_key_file=table.string("tls_key_file", absolute_path),
    )
    table.finish()
    return smarthost


# -- [dkim] and [dns]: optional tables, every key with a default --------------

DKIM_KEY_BITS = (1024, 2048, 3072, 4096)
DMARC_POLICIES = ("none", "quarantine", "reject")


def _optional_table(parent: _Table, name: str) -> _Table:
    """A table that may be absent: then an empty one, so that every key takes its default."""
    if name in parent.data:
        return parent.table(name)
    return _Table(parent.file, parent.key(name), {})


# The selector of the relay's ARC keys (rspamd's local.d/arc.conf), published
# beside the DKIM keys: a DKIM selector of that name would share their DNS name.
ARC_SELECTOR = "arc"


def dkim_selector(value: str) -> str:
    if not _LABEL_RE.fullmatch(value):
        raise RuleError("not a DKIM selector (one DNS label: letters, digits and '-')", 'e.g. "oignons2026"')
    if value.lower() == ARC_SELECTOR:
        raise RuleError(f"is the selector of the relay's ARC keys ({ARC_SELECTOR!r})", 'e.g. "oignons2026"')
    return value


def spf_record(value: str) -> str:
    one_line(value)
    if not value.startswith("v=spf1 ") or '"' in value:
        raise RuleError("not an SPF record (starting with `v=spf1 `, no quotes)", 'e.g. "v=spf1 mx -all"')
    return " ".join(value.split())


def dmarc_policy(value: str) -> str:
    if value not in DMARC_POLICIES:
        raise RuleError(
            f"not a DMARC policy (one of {', '.join(DMARC_POLICIES)})", 'start with "none" and read the reports'
        )
    return value


def _parse_dkim(table: _Table, site_domain: str, destinations: tuple[str, ...]) -> Dkim:
    selector = table.optional_string("selector", dkim_selector) or DKIM_SELECTOR
    key_bits = table.optional_integer("key_bits") or DKIM_DEFAULT_KEY_BITS
    if key_bits not in DKIM_KEY_BITS:
        raise table.error("key_bits", key_bits, f"not an RSA key size rspamadm makes ({DKIM_KEY_BITS})", "e.g. 2048")
    domains: tuple[str, ...] = (site_domain,)
    if "domains" in table.data:
        domains = table.strings("domains", domain_name)
    known = frozenset(destinations)
    for index, domain in enumerate(domains):
        if domain not in known:
            raise table.error(
                f"domains[{index}]" if "domains" in table.data else "domains",
                domain,
                "is not in relay.destinations",
                "the relay signs only for its own domains",
            )
    table.finish()
    return Dkim(selector=selector, key_bits=key_bits, domains=domains)


def tlsrpt_address(value: str) -> str:
    """Where TLS-RPT reports go: a mail address, or an https: URI."""
    if value.startswith("https:"):
        return web_address(value)
    try:
        return mail_address(value)
    except RuleError:
        raise RuleError("neither a mail address nor an https: URI", 'e.g. "tls-reports@nos-oignons.net"') from None


def public_address(value: str) -> str:
    """An IPv4 or IPv6 address others reach the relay at (no private, loopback or link-local one)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise RuleError("not an IPv4 or IPv6 address", 'e.g. "192.0.2.25" or "2001:db8::25"') from None
    if address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast:
        raise RuleError("not an address others can reach", "give the relay's public address")
    return str(address)


def _parse_dns(table: _Table, site_domain: str) -> Dns:
    dns = Dns(
        ttl=table.optional_integer("ttl") or DNS_TTL,
        spf=table.optional_string("spf", spf_record) or DNS_SPF,
        dmarc_policy=table.optional_string("dmarc_policy", dmarc_policy) or DNS_DMARC_POLICY,
        dmarc_rua=table.optional_string("dmarc_rua", mail_address) or f"postmaster@{site_domain}",
        tlsrpt_rua=table.optional_string("tlsrpt_rua", tlsrpt_address),
        relay_addresses=table.strings("relay_addresses", public_address) if "relay_addresses" in table.data else (),
    )
    table.finish()
    return dns


# [fleet]'s defaults: a daily heartbeat with up to an hour's random delay is
# late after a day and a half; a message deferred for hours is worth a look.
FLEET_HEARTBEAT_LOCAL_PART = "heartbeat"  # the same as oignons_mail.health.HEARTBEAT_LOCAL_PART (a unit test)
FLEET_LATE_AFTER = "36h"
FLEET_QUEUE_AFTER = "4h"


def _parse_fleet(table: _Table, site_domain: str, relay: Relay, users_to_root: tuple[str, ...]) -> Fleet:
    address = table.optional_string("heartbeat_address", mail_address) or f"{FLEET_HEARTBEAT_LOCAL_PART}@{site_domain}"
    local, _, address_domain = address.rpartition("@")
    if address_domain not in relay.destinations:
        raise table.error(
            "heartbeat_address", address, "is not in a domain of relay.destinations", "the relay receives heartbeats"
        )
    taken = _taken_local_parts(relay, users_to_root)
    taken.update(dict.fromkeys(relay.responder.local_parts, "a responder address (relay.responder.local_parts)"))
    if relay.recipient_delimiter in local:
        raise table.error(
            "heartbeat_address",
            address,
            f"has the recipient delimiter {relay.recipient_delimiter!r} in its local part",
            f'e.g. "{FLEET_HEARTBEAT_LOCAL_PART}@{site_domain}"',
        )
    if local in taken:
        raise table.error(
            "heartbeat_address", address, f"is also {taken[local]}", "give heartbeats an address of their own"
        )
    fleet = Fleet(
        heartbeat_address=address,
        late_after_seconds=postfix_time_seconds(table.optional_string("late_after", positive_time) or FLEET_LATE_AFTER),
        queue_after_seconds=postfix_time_seconds(
            table.optional_string("queue_after", positive_time) or FLEET_QUEUE_AFTER
        ),
        nodes=table.strings("nodes", host_label, allow_empty=True) if "nodes" in table.data else (),
    )
    table.finish()
    return fleet
