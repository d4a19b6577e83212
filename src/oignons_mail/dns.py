"""The DNS records a site needs, as zone-file lines, and a check of what DNS serves.

`site_records` computes them (pure): MX for each relay destination, SPF,
one DKIM key per signing domain and selector, DMARC and the authorisation
of its report address (`_report._dmarc`), TLS-RPT when asked for, the
relay's addresses when the site gives them, and DANE `TLSA 3 1 1` for the
relay's SMTP ports from the digest of its public key (the sha256 line of
`oignons-mail pin`).  `check_records` compares them with what a lookup
function answers (a TXT family twice at one name is wrong, a TLSA answer
not DNSSEC-validated is `unsigned`), `check_reverse` the relay's
forward-confirmed reverse DNS; `resolver` does the lookups over dnspython.
Values are kept in one canonical form per type, so that the comparison
ignores quoting, string splitting, case and spacing.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from oignons_mail import pin
from oignons_mail.errors import UserMessageError
from oignons_mail.site import Site

# Postfix listens on these for mail from other servers (25) and SMTPS (465).
TLSA_PORTS = (25, 465)
MX_PREFERENCE = 10
# RFC 1035: one character-string of a TXT record holds at most 255 octets.
TXT_STRING_BYTES = 255
DKIM_KEY_DIRECTORY = Path("/var/lib/rspamd/dkim")
PUBLIC_KEY_SUFFIX = ".pub"


class DnsError(UserMessageError):
    """A key file is missing or unreadable, or DNS did not answer."""


@dataclass(frozen=True)
class DnsRecord:
    """One record: owner name (absolute, with the dot), type, value in canonical form."""

    name: str
    type: str  # MX, TXT, TLSA, A, AAAA or PTR
    value: str  # MX "10 host."; TXT the joined text; TLSA "3 1 1 hex"; A/AAAA an address; PTR "host."
    what: str  # for people: "SPF of nos-oignons.net"


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    public_key: bytes  # DER SubjectPublicKeyInfo


# -- computing the records (pure) ----------------------------------------------


def absolute(name: str) -> str:
    return name.lower().rstrip(".") + "."


def tlsa_value(spki_der: bytes) -> str:
    """TLSA 3 1 1: DANE-EE, SubjectPublicKeyInfo, SHA-256 (the sha256 pin without colons)."""
    return "3 1 1 " + pin.pins(spki_der)["sha256"].replace(":", "")


def dkim_value(public_key: bytes) -> str:
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public_key).decode("ascii")


# RFC 7489 section 7.1 and erratum 5440: exactly one record, semicolon included.
DMARC_REPORT_AUTHORISATION = "v=DMARC1;"


def dmarc_value(policy: str, rua: str) -> str:
    return f"v=DMARC1; p={policy}; rua=mailto:{rua}"


def site_records(site: Site, relay_keys: Sequence[bytes], dkim_keys: Sequence[DkimKey]) -> list[DnsRecord]:
    """Every record to publish: relay_keys are the SubjectPublicKeyInfos TLSA names (now, and next)."""
    relay = absolute(site.relay.hostname)
    records = [DnsRecord(absolute(d), "MX", f"{MX_PREFERENCE} {relay}", f"MX of {d}") for d in site.relay.destinations]
    records += [DnsRecord(absolute(d), "TXT", site.dns.spf, f"SPF of {d}") for d in site.relay.destinations]
    records += node_spf_records(site)
    for key in sorted(dkim_keys, key=lambda k: (k.domain, k.selector)):
        records.append(
            DnsRecord(
                absolute(f"{key.selector}._domainkey.{key.domain}"),
                "TXT",
                dkim_value(key.public_key),
                f"DKIM key {key.selector} of {key.domain}",
            )
        )
    dmarc = dmarc_value(site.dns.dmarc_policy, site.dns.dmarc_rua)
    records += [DnsRecord(absolute(f"_dmarc.{d}"), "TXT", dmarc, f"DMARC of {d}") for d in dmarc_domains(site)]
    records += report_authorisations(site)
    if site.dns.tlsrpt_rua:
        tlsrpt = tlsrpt_value(site.dns.tlsrpt_rua)
        records += [
            DnsRecord(absolute(f"_smtp._tls.{d}"), "TXT", tlsrpt, f"TLS-RPT of {d}") for d in site.relay.destinations
        ]
    records += [
        DnsRecord(relay, address_type(address), address, f"address of {site.relay.hostname}")
        for address in site.dns.relay_addresses
    ]
    for port in TLSA_PORTS:
        for spki in relay_keys:
            name = absolute(f"_{port}._tcp.{site.relay.hostname}")
            records.append(DnsRecord(name, "TLSA", tlsa_value(spki), f"TLSA of {site.relay.hostname} port {port}"))
    return records


def node_spf_records(site: Site) -> list[DnsRecord]:
    """SPF for the nodes that may send anywhere (relay.node_pins): their mail leaves through the relay.

    A node sends as root@NODE.<site domain> (its myorigin): the envelope
    domain is the node's name, so SPF passes there, aligned with the From:
    domain, when the name lets the relay send.  It includes the site
    domain's SPF, which does (`mx`, and whatever else [dns] spf says).
    """
    value = f"v=spf1 include:{site.domain} -all"
    return [
        DnsRecord(absolute(f"{node}.{site.domain}"), "TXT", value, f"SPF of node {node}")
        for node, _ in site.relay.node_pins
    ]


def dmarc_domains(site: Site) -> tuple[str, ...]:
    """The domains that get a DMARC record: the signing domains, and the site's domain when nodes send out.

    A node's mail (From: root@NODE.<site domain>) passes DMARC by its SPF
    record (node_spf_records) only where a policy exists: the receiver looks
    for it at the node's name, then at the organisational domain, the site's.
    """
    extra = (site.domain,) if site.relay.node_pins and site.domain not in site.dkim.domains else ()
    return (*site.dkim.domains, *extra)


def _within(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def report_authorisations(site: Site) -> list[DnsRecord]:
    """RFC 7489 section 7.1: `D._report._dmarc.H` for each DMARC domain D whose rua host H lies elsewhere.

    Without the public suffix list, "elsewhere" is: neither D nor H is the
    other or below it.  Where both share an organisational domain another way
    (a.example.org, b.example.org) the record is printed though not needed,
    which is harmless.
    """
    host = site.dns.dmarc_rua.rpartition("@")[2].lower()
    return [
        DnsRecord(
            absolute(f"{domain}._report._dmarc.{host}"),
            "TXT",
            DMARC_REPORT_AUTHORISATION,
            f"DMARC report authorisation of {domain} at {host}",
        )
        for domain in dmarc_domains(site)
        if not (_within(domain, host) or _within(host, domain))
    ]


def tlsrpt_value(rua: str) -> str:
    """RFC 8460: a mail address becomes a mailto: URI, an https: URI stays."""
    return f"v=TLSRPTv1; rua={rua if rua.startswith('https:') else 'mailto:' + rua}"


def address_type(address: str) -> str:
    return "A" if ipaddress.ip_address(address).version == 4 else "AAAA"


def pointer_record(address: str, hostname: str) -> DnsRecord:
    """The PTR an address of the relay needs: set by whoever holds the address block (the hosting provider)."""
    name = ipaddress.ip_address(address).reverse_pointer + "."
    return DnsRecord(name, "PTR", absolute(hostname), f"reverse DNS of {address} ({hostname})")


def txt_chunks(text: str) -> list[str]:
    """The text cut into pieces of at most 255 bytes of UTF-8 each, never inside a character."""
    chunks: list[str] = []
    current = ""
    size = 0
    for character in text:
        length = len(character.encode("utf-8"))
        if size + length > TXT_STRING_BYTES:
            chunks.append(current)
            current, size = "", 0
        current += character
        size += length
    return [*chunks, current]


def txt_strings(text: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 bytes each."""
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in txt_chunks(text))


def zone_line(record: DnsRecord, ttl: int) -> str:
    data = txt_strings(record.value) if record.type == "TXT" else record.value
    return f"{record.name} {ttl} IN {record.type} {data}"


def zone_text(site: Site, records: Iterable[DnsRecord]) -> str:
    lines = [f"; DNS records of {PurePath(site.source).name} for {site.relay.hostname} (oignons-mail dns)"]
    lines += [zone_line(record, site.dns.ttl) for record in records]
    if site.dns.relay_addresses:
        lines.append("; Reverse DNS: ask the provider of each address for this PTR (not in the site's zones)")
        lines += [
            "; " + zone_line(pointer_record(a, site.relay.hostname), site.dns.ttl) for a in site.dns.relay_addresses
        ]
    return "\n".join(lines) + "\n"


# -- the key files ----------------------------------------------------------------

_PEM_PUBLIC_KEY_RE = re.compile(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", re.S)


def read_public_key(path: Path) -> bytes:
    """The DER SubjectPublicKeyInfo of a PEM public key file (`openssl pkey -pubout`)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise DnsError(f"{path}: cannot be read as a PEM public key: {error}") from None
    match = _PEM_PUBLIC_KEY_RE.search(text)
    if match is None:
        raise DnsError(
            f"{path}: no PEM public key in it (-----BEGIN PUBLIC KEY-----)",
        )
    try:
        return base64.b64decode("".join(match.group(1).split()), validate=True)
    except ValueError:
        raise DnsError(f"{path}: the PEM public key is not valid base64") from None


def dkim_key_from_file(path: Path) -> DkimKey:
    """A DKIM public key named DOMAIN.SELECTOR.pub, as the relay's key generation writes it."""
    stem = path.name.removesuffix(PUBLIC_KEY_SUFFIX)
    domain, dot, selector = stem.rpartition(".")
    if not path.name.endswith(PUBLIC_KEY_SUFFIX) or not dot or "." not in domain:
        raise DnsError(f"{path}: not named DOMAIN.SELECTOR{PUBLIC_KEY_SUFFIX} (e.g. nos-oignons.net.bulbe1.pub)")
    return DkimKey(domain, selector, read_public_key(path))


def site_dkim_keys(site: Site, directory: Path, extra_files: Sequence[Path], *, require: bool = True) -> list[DkimKey]:
    """The site domains' keys of every selector found in directory, plus extra_files.

    The site's current selector must have a key for every signing domain
    (`require`; else `missing_dkim_keys` says which are missing); other
    selectors (the previous one, during a rotation) are published too.
    """
    keys = {(k.domain, k.selector): k for k in map(dkim_key_from_file, extra_files)}
    if directory.is_dir():
        for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}")):
            key = dkim_key_from_file(path)
            if key.domain in site.dkim.domains:
                keys.setdefault((key.domain, key.selector), key)
    found = [key for key in keys.values() if key.domain in site.dkim.domains]
    problem = missing_dkim_keys(site, found, directory)
    if problem and require:
        raise DnsError(problem)
    return found


def missing_dkim_keys(site: Site, keys: Sequence[DkimKey], directory: Path) -> str | None:
    """What is missing for the site's current selector (a message with a hint), None when nothing is."""
    have = {(k.domain, k.selector) for k in keys}
    missing = [d for d in site.dkim.domains if (d, site.dkim.selector) not in have]
    if not missing:
        return None
    names = ", ".join(f"{d}.{site.dkim.selector}{PUBLIC_KEY_SUFFIX}" for d in missing)
    return (
        f"no DKIM public key for selector {site.dkim.selector} of {', '.join(missing)} in {directory} ({names})\n"
        "  hint: run this on the relay, where oignons-mail-relay made the keys, or give --dkim-key FILE"
    )


# -- checking what DNS serves ----------------------------------------------------

# lookup(name, type) -> the values DNS serves, in canonical form ([] when there
# is none); raises DnsError when DNS does not answer.
Lookup = Callable[[str, str], list[str]]
# validated(name, type) -> whether the answer lookup got for it was DNSSEC-validated
# (the AD bit, set by a validating resolver); asked after lookup.
Validated = Callable[[str, str], bool]


@dataclass(frozen=True)
class Resolver:
    lookup: Lookup
    validated: Validated


# The statuses of a finding: only "fine" passes.
FINE, MISSING, DIFFERENT, UNSIGNED = "fine", "missing", "different", "unsigned"


@dataclass(frozen=True)
class Finding:
    record: DnsRecord
    status: str  # FINE, MISSING, DIFFERENT or UNSIGNED
    found: tuple[str, ...]
    note: str = ""  # why, when the values alone do not say it

    def line(self) -> str:
        text = f"{self.status:9} {self.record.what}: {self.record.name} {self.record.type}"
        if self.status == DIFFERENT:
            text += f"\n          expected: {self.record.value}\n          found:    " + "\n          found:    ".join(
                self.found
            )
        elif self.status == MISSING:
            text += f" {self.record.value}"
        if self.note:
            text += f"\n          {self.note}"
        return text


def _canonical_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


_CANONICAL_HOST: dict[str, Callable[[str], str]] = {
    "A": _canonical_address,
    "AAAA": _canonical_address,
    "PTR": absolute,
}


def canonical(record_type: str, value: str) -> str:
    """One form per value: case and spacing of MX and TLSA, tag order and spacing of TXT tag lists."""
    if record_type == "MX":
        preference, _, host = value.partition(" ")
        return f"{int(preference)} {absolute(host.strip())}"
    if record_type == "TLSA":
        usage, selector, matching, *data = value.split()
        return f"{int(usage)} {int(selector)} {int(matching)} {''.join(data).lower()}"
    if record_type in _CANONICAL_HOST:
        return _CANONICAL_HOST[record_type](value.strip())
    if value.startswith(("v=DKIM1", "v=DMARC1", "v=TLSRPTv1")):
        tags = [tag.strip() for tag in value.split(";") if tag.strip()]
        pairs = sorted((name.strip(), "".join(text.split())) for name, _, text in (t.partition("=") for t in tags))
        return "; ".join(f"{name}={text}" for name, text in pairs)
    return " ".join(value.split())


def _family(record_type: str, value: str) -> str:
    """TXT records share names: SPF is `v=spf1 ...`, DMARC `v=DMARC1; ...`: compare like with like."""
    if record_type != "TXT":
        return record_type
    return re.split(r"[ ;]", value.strip(), maxsplit=1)[0].lower()


def _not_validated(name: str, record_type: str) -> bool:
    return False


def check_records(records: Iterable[DnsRecord], lookup: Lookup, validated: Validated = _not_validated) -> list[Finding]:
    """Each record against DNS: a TXT family twice at one name is wrong, a TLSA not validated is unsigned."""
    findings = []
    for record in records:
        family = _family(record.type, record.value)
        found = [v for v in lookup(record.name, record.type) if _family(record.type, v) == family]
        expected = canonical(record.type, record.value)
        note = ""
        if not found:
            status = MISSING
        elif record.type == "TXT" and len(found) > 1:
            # RFC 7208 4.5 (SPF permerror), RFC 7489 6.6.3 and 7.1 (DMARC), RFC 8460 3: none counts.
            status = DIFFERENT
            note = f"{len(found)} {family} records at one name: receivers use none of them (keep exactly one)"
        elif expected not in (canonical(record.type, v) for v in found):
            status = DIFFERENT
        elif record.type == "TLSA" and not validated(record.name, record.type):
            status = UNSIGNED
            note = "the answer is not DNSSEC-validated (no AD bit): senders ignore TLSA in an unsigned zone"
        else:
            status = FINE
        findings.append(Finding(record, status, tuple(found), note))
    return findings


def check_reverse(site: Site, lookup: Lookup) -> list[Finding]:
    """Forward-confirmed reverse DNS: each address of the relay has one PTR, the relay's name, which has it back.

    The addresses are the site's ([dns] relay_addresses), else those DNS serves for relay.hostname.
    """
    hostname = absolute(site.relay.hostname)
    forward = {t: {canonical(t, v) for v in lookup(hostname, t)} for t in ("A", "AAAA")}
    addresses = list(site.dns.relay_addresses) or sorted(forward["A"]) + sorted(forward["AAAA"])
    if not addresses:
        wanted = DnsRecord(hostname, "A", "(an IPv4 or IPv6 address)", f"address of {site.relay.hostname}")
        return [Finding(wanted, MISSING, (), "no A or AAAA record: nothing can reach the relay")]
    findings = []
    for address in addresses:
        record = pointer_record(address, site.relay.hostname)
        found = lookup(record.name, "PTR")
        note = ""
        if not found:
            status = MISSING
            note = "ask the provider of the address for this PTR (docs/deliverability.md)"
        elif len(found) > 1 or canonical("PTR", found[0]) != record.value:
            status = DIFFERENT
        elif canonical(address_type(address), address) not in forward[address_type(address)]:
            status = DIFFERENT
            note = f"{hostname} has no {address_type(address)} record {address}: the reverse name is not confirmed"
        else:
            status = FINE
        findings.append(Finding(record, status, tuple(found), note))
    return findings


def check_site(site: Site, records: Iterable[DnsRecord], resolver: Resolver) -> list[Finding]:
    """What `dns --check` reports: every record, then the relay's reverse DNS."""
    return check_records(records, resolver.lookup, resolver.validated) + check_reverse(site, resolver.lookup)


def relay_keys(site: Site, certificates: Sequence[Path] | None) -> tuple[list[bytes], list[str]]:
    """The relay's public keys for TLSA: the given certificates, else the site's when it is here."""
    if certificates:
        return [pin.subject_public_key_info(pin.certificate_from_file(path)) for path in certificates], []
    default = Path(site.relay.tls_cert_file)
    if not default.exists():
        return [], [
            f"no TLSA records: the relay's certificate {default} (relay.tls_cert_file) is not on this machine\n"
            "  hint: run this on the relay, or give --cert FILE"
        ]
    return [pin.subject_public_key_info(pin.certificate_from_file(default))], []


def site_check(site: Site, resolver: Resolver, dkim_directory: Path = DKIM_KEY_DIRECTORY) -> list[Finding]:
    """`dns --check` of an installed relay: its certificate's TLSA, the DKIM keys it has (status uses it)."""
    keys, _ = relay_keys(site, None)
    records = site_records(site, keys, site_dkim_keys(site, dkim_directory, [], require=False))
    return check_site(site, records, resolver)


def resolver(server: str | None, timeout: float = 5.0) -> Resolver:
    """Lookups through the system's resolver, or through the DNS server at `server`.

    Each query asks for DNSSEC validation (AD and DO bits); whether the answer
    was validated is what the resolver says, so ask one that validates.
    """
    # Only the check needs dnspython: building the packages (which imports the
    # CLI) does not, so it is no build dependency.
    import dns.exception  # noqa: PLC0415
    import dns.flags  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    system = dns.resolver.Resolver(configure=server is None)
    if server is not None:
        system.nameservers = [server]
    system.lifetime = timeout
    system.flags = dns.flags.RD | dns.flags.AD
    system.use_edns(0, dns.flags.DO, 1232)
    where = server or "the system's resolver (/etc/resolv.conf)"
    authenticated: dict[tuple[str, str], bool] = {}

    def lookup(name: str, record_type: str) -> list[str]:
        authenticated[(name, record_type)] = False
        try:
            answer = system.resolve(name, record_type, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError) as error:
            raise DnsError(f"{where} did not answer {name} {record_type}: {error}") from None
        authenticated[(name, record_type)] = bool(answer.response.flags & dns.flags.AD)
        values = []
        for rdata in answer.rrset or ():
            if record_type == "TXT":
                values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif record_type == "MX":
                values.append(f"{rdata.preference} {rdata.exchange}")
            elif record_type == "TLSA":
                values.append(f"{rdata.usage} {rdata.selector} {rdata.mtype} {rdata.cert.hex()}")
            elif record_type in ("A", "AAAA"):
                values.append(rdata.address)
            elif record_type == "PTR":
                values.append(str(rdata.target))
        return values

    def validated(name: str, record_type: str) -> bool:
        return authenticated.get((name, record_type), False)

    return Resolver(lookup, validated)
