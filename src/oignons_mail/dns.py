"""The DNS records a site needs, as zone-file lines, and a check of what DNS serves.

`site_records` computes them (pure): MX for each relay destination, SPF,
one DKIM key per signing domain and selector, DMARC, and DANE `TLSA 3 1 1`
for the relay's SMTP ports from the digest of its public key (the sha256
line of `oignons-mail pin`).  `check_records` compares them with what a
lookup function answers; `resolver_lookup` is that function over
dnspython.  Values are kept in one canonical form per type, so that the
comparison ignores quoting, string splitting, case and spacing.
"""

from __future__ import annotations

import base64
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
    type: str  # MX, TXT or TLSA
    value: str  # MX "10 host."; TXT the joined text; TLSA "3 1 1 hex"
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


def dmarc_value(policy: str, rua: str) -> str:
    return f"v=DMARC1; p={policy}; rua=mailto:{rua}"


def site_records(site: Site, relay_keys: Sequence[bytes], dkim_keys: Sequence[DkimKey]) -> list[DnsRecord]:
    """Every record to publish: relay_keys are the SubjectPublicKeyInfos TLSA names (now, and next)."""
    relay = absolute(site.relay.hostname)
    records = [DnsRecord(absolute(d), "MX", f"{MX_PREFERENCE} {relay}", f"MX of {d}") for d in site.relay.destinations]
    records += [DnsRecord(absolute(d), "TXT", site.dns.spf, f"SPF of {d}") for d in site.relay.destinations]
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
    records += [DnsRecord(absolute(f"_dmarc.{d}"), "TXT", dmarc, f"DMARC of {d}") for d in site.dkim.domains]
    for port in TLSA_PORTS:
        for spki in relay_keys:
            name = absolute(f"_{port}._tcp.{site.relay.hostname}")
            records.append(DnsRecord(name, "TLSA", tlsa_value(spki), f"TLSA of {site.relay.hostname} port {port}"))
    return records


def txt_strings(text: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 bytes each."""
    chunks = [text[i : i + TXT_STRING_BYTES] for i in range(0, len(text), TXT_STRING_BYTES)] or [""]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


def zone_line(record: DnsRecord, ttl: int) -> str:
    data = txt_strings(record.value) if record.type == "TXT" else record.value
    return f"{record.name} {ttl} IN {record.type} {data}"


def zone_text(site: Site, records: Iterable[DnsRecord]) -> str:
    lines = [f"; DNS records of {PurePath(site.source).name} for {site.relay.hostname} (oignons-mail dns)"]
    lines += [zone_line(record, site.dns.ttl) for record in records]
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


@dataclass(frozen=True)
class Finding:
    record: DnsRecord
    status: str  # "fine", "missing" or "different"
    found: tuple[str, ...]

    def line(self) -> str:
        text = f"{self.status:9} {self.record.what}: {self.record.name} {self.record.type}"
        if self.status == "different":
            text += f"\n          expected: {self.record.value}\n          found:    " + "\n          found:    ".join(
                self.found
            )
        elif self.status == "missing":
            text += f" {self.record.value}"
        return text


def canonical(record_type: str, value: str) -> str:
    """One form per value: case and spacing of MX and TLSA, tag order and spacing of TXT tag lists."""
    if record_type == "MX":
        preference, _, host = value.partition(" ")
        return f"{int(preference)} {absolute(host.strip())}"
    if record_type == "TLSA":
        usage, selector, matching, *data = value.split()
        return f"{int(usage)} {int(selector)} {int(matching)} {''.join(data).lower()}"
    if value.startswith(("v=DKIM1", "v=DMARC1")):
        tags = [tag.strip() for tag in value.split(";") if tag.strip()]
        pairs = sorted((name.strip(), "".join(text.split())) for name, _, text in (t.partition("=") for t in tags))
        return "; ".join(f"{name}={text}" for name, text in pairs)
    return " ".join(value.split())


def _family(record_type: str, value: str) -> str:
    """TXT records share names: SPF is `v=spf1 ...`, DMARC `v=DMARC1; ...`: compare like with like."""
    if record_type != "TXT":
        return record_type
    return re.split(r"[ ;]", value.strip(), maxsplit=1)[0].lower()


def check_records(records: Iterable[DnsRecord], lookup: Lookup) -> list[Finding]:
    findings = []
    for record in records:
        family = _family(record.type, record.value)
        found = [v for v in lookup(record.name, record.type) if _family(record.type, v) == family]
        expected = canonical(record.type, record.value)
        if not found:
            status = "missing"
        elif expected in (canonical(record.type, v) for v in found):
            status = "fine"
        else:
            status = "different"
        findings.append(Finding(record, status, tuple(found)))
    return findings


def resolver_lookup(server: str | None, timeout: float = 5.0) -> Lookup:
    """A lookup through the system's resolver, or through the DNS server at `server`."""
    # Only the check needs dnspython: building the packages (which imports the
    # CLI) does not, so it is no build dependency.
    import dns.exception  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    resolver = dns.resolver.Resolver(configure=server is None)
    if server is not None:
        resolver.nameservers = [server]
    resolver.lifetime = timeout
    where = server or "the system's resolver (/etc/resolv.conf)"

    def lookup(name: str, record_type: str) -> list[str]:
        try:
            answer = resolver.resolve(name, record_type, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError) as error:
            raise DnsError(f"{where} did not answer {name} {record_type}: {error}") from None
        values = []
        for rdata in answer.rrset or ():
            if record_type == "TXT":
                values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif record_type == "MX":
                values.append(f"{rdata.preference} {rdata.exchange}")
            elif record_type == "TLSA":
                values.append(f"{rdata.usage} {rdata.selector} {rdata.mtype} {rdata.cert.hex()}")
        return values

    return lookup
