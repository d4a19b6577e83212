"""`oignons-mail status`: local checks of a node or the relay, each `ok|warn|fail NAME detail`.

Standard library only (the tool must stay light on a node), and quick: each
check runs at most one or two short commands, each with a time limit.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from oignons_mail import dns, health, pin, site
from oignons_mail.errors import UserMessageError

ROLES = ("relay", "smarthost")
LEVELS = ("ok", "warn", "fail")
COMMAND_TIMEOUT = 5.0
RELAY_CONNECT_TIMEOUT = 1.5
# The relay's certificate: warn this long before it expires.
CERTIFICATE_WARN_SECONDS = 14 * 86400
CONFINEMENT_UNITS = ("postfix.service", "postfix@-.service")
# Each DNS query of the dns check: the first one unanswered ends it (DNS unreachable).
DNS_TIMEOUT = 2.0
CONFINEMENT_DROP_IN = "oignons-mail-relay.conf"


@dataclass(frozen=True)
class Check:
    level: str  # ok, warn or fail
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.level:<4} {self.name} {self.detail}"


@dataclass(frozen=True)
class Host:
    """Where the checks look: the root of the file system (tests use another) and the commands to run."""

    root: Path = Path("/")
    run: Callable[[Sequence[str]], tuple[int, str]] | None = None

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def command(self, argv: Sequence[str]) -> tuple[int, str]:
        """Exit status and standard output (stderr appended); 127 when the program is missing."""
        if self.run is not None:
            return self.run(argv)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, errors="replace"
            )
        except FileNotFoundError:
            return 127, f"{argv[0]}: not installed"
        except subprocess.TimeoutExpired:
            return 124, f"{argv[0]}: no answer within {COMMAND_TIMEOUT:g} s"
        return done.returncode, done.stdout + done.stderr

    def role(self) -> str | None:
        for role in ROLES:
            if self.path(f"/usr/share/oignons-mail-{role}/main.cf").is_file():
                return role
        return None


@dataclass(frozen=True)
class Queue:
    active: int
    deferred: int
    hold: int
    oldest_deferred_seconds: int
    deferral_reason: str


def parse_postqueue_json(text: str, now: float) -> Queue:
    """`postqueue -j`: one JSON object per message.  The reason shown is that of the newest deferred message."""
    counts = {"active": 0, "deferred": 0, "hold": 0}
    arrivals: list[float] = []
    reason, newest = "", float("-inf")
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or message.get("queue_name") not in counts:
            continue
        counts[message["queue_name"]] += 1
        arrival = message.get("arrival_time")
        if message["queue_name"] != "deferred" or not isinstance(arrival, int | float):
            continue
        arrivals.append(arrival)
        recipients = message.get("recipients")
        reasons = (
            [r.get("delay_reason") for r in recipients if isinstance(r, dict)] if isinstance(recipients, list) else []
        )
        text_reasons = [r for r in reasons if isinstance(r, str) and r]
        if text_reasons and arrival > newest:
            reason, newest = text_reasons[0], arrival
    return Queue(
        active=counts["active"],
        deferred=counts["deferred"],
        hold=counts["hold"],
        oldest_deferred_seconds=max(0, int(now - min(arrivals))) if arrivals else 0,
        deferral_reason=reason,
    )


def read_queue(host: Host, now: float) -> tuple[Queue | None, str]:
    status, output = host.command(["postqueue", "-j"])
    if status != 0:
        return None, output.strip().splitlines()[-1] if output.strip() else f"postqueue -j: exit status {status}"
    return parse_postqueue_json(output, now), ""


def postconf(host: Host, *keys: str) -> dict[str, str]:
    """Values of main.cf keys, expanded (`postconf -hx`); empty when postconf fails."""
    status, output = host.command(["postconf", "-hx", *keys])
    values = output.splitlines()
    if status != 0 or len(values) != len(keys):
        return {}
    return dict(zip(keys, values, strict=True))


# -- the checks ----------------------------------------------------------------


def check_postfix(host: Host) -> Check:
    status, output = host.command(["postfix", "status"])
    if status == 0:
        return Check("ok", "postfix", "running")
    return Check("fail", "postfix", (output.strip().splitlines() or ["not running"])[-1])


def check_applied(host: Host, role: str) -> Check:
    package = f"oignons-mail-{role}"
    status, output = host.command(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", package])
    state, _, version = output.strip().partition(" ")
    version = version.strip()
    if status != 0 or state != "ii":
        return Check("fail", "applied", f"{package} is not fully installed ({state or 'unknown'}): dpkg --configure -a")
    applied_path = host.path(f"/var/lib/{package}/main.cf.applied")
    shipped_path = host.path(f"/usr/share/{package}/main.cf")
    try:
        applied = _settings(applied_path.read_text(encoding="utf-8"))
        shipped = _settings(shipped_path.read_text(encoding="utf-8"))
    except OSError as error:
        return Check("fail", "applied", f"no record of {version}'s settings: {error}")
    missing = sorted(set(shipped) - set(applied))
    if missing:
        return Check(
            "fail", "applied", f"{version}'s settings not applied ({', '.join(missing[:3])}): dpkg-reconfigure"
        )
    code, live_text = host.command(["postconf", "-n"])
    live = _settings(live_text) if code == 0 else {}
    changed = sorted(key for key, value in applied.items() if live.get(key) != value)
    if changed:
        return Check("warn", "applied", f"{version} applied; changed since by hand: {', '.join(changed[:3])}")
    return Check("ok", "applied", f"{package} {version}")


def _settings(text: str) -> dict[str, str]:
    result = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            result[key.strip()] = value.strip()
    return result


def check_queue(queue: Queue | None, error: str, queue_after_seconds: int) -> Check:
    if queue is None:
        return Check("fail", "queue", error)
    detail = f"{queue.active} active, {queue.deferred} deferred, {queue.hold} hold"
    if queue.deferred:
        detail += f", oldest deferred {health.duration_text(queue.oldest_deferred_seconds)}"
        if queue.deferral_reason:
            detail += f" ({queue.deferral_reason})"
    stuck = queue.deferred and queue.oldest_deferred_seconds > queue_after_seconds
    return Check("warn" if stuck or queue.hold else "ok", "queue", detail)


def check_relay_pin(host: Host, queue: Queue | None) -> Check:
    values = postconf(host, "relayhost", "smtp_tls_fingerprint_digest", "smtp_tls_fingerprint_cert_match")
    if not values:
        return Check("fail", "relay-pin", "postconf cannot read the relay and its pins")
    # [host]:port or host (Postfix looks up its MX; the relay is its own MX here).
    relay = values["relayhost"]
    relay = relay[1:].partition("]")[0] if relay.startswith("[") else relay.partition(":")[0]
    digest = values["smtp_tls_fingerprint_digest"] or "sha256"
    configured = {p.lower() for p in values["smtp_tls_fingerprint_cert_match"].replace(",", " ").split()}
    reason = f"; the queue says: {queue.deferral_reason}" if queue is not None and queue.deferral_reason else ""
    try:
        certificate = pin.certificate_from_server(relay, 25, timeout=RELAY_CONNECT_TIMEOUT)
    except pin.PinError as error:
        return Check("warn", "relay-pin", f"{error}{reason}")
    presented = {_colons(hashlib.new(digest, certificate).hexdigest())}
    presented.add(pin.pins(pin.subject_public_key_info(certificate)).get(digest, ""))
    if presented & configured:
        return Check("ok", "relay-pin", f"{relay} presents a pinned key ({digest})")
    key_pin = pin.pins(pin.subject_public_key_info(certificate)).get(digest, "?")
    return Check("fail", "relay-pin", f"{relay} presents key {key_pin}, which no pin matches{reason}")


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i : i + 2] for i in range(0, len(hexdigest), 2))


def check_confinement(host: Host) -> Check:
    for unit in CONFINEMENT_UNITS:
        # The unit that runs master(8): bookworm's postfix.service is a oneshot wrapper of postfix@-.service.
        status, output = host.command(
            ["systemctl", "show", "-p", "ActiveState", "-p", "Type", "-p", "DropInPaths", unit]
        )
        running = "ActiveState=active" in output.splitlines() and "Type=oneshot" not in output.splitlines()
        if status == 0 and running and CONFINEMENT_DROP_IN in output:
            return Check("ok", "confinement", f"{unit} runs under {CONFINEMENT_DROP_IN}")
    return Check("fail", "confinement", f"no active Postfix unit runs under {CONFINEMENT_DROP_IN}")


def check_milter(host: Host) -> Check:
    values = postconf(host, "smtpd_milters")
    socket_path = values.get("smtpd_milters", "").removeprefix("unix:")
    if not socket_path.startswith("/"):
        return Check("warn", "rspamd", f"no unix milter socket in smtpd_milters ({socket_path or 'unset'})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1.0)
        try:
            client.connect(str(host.path(socket_path)))
        except OSError as error:
            return Check("fail", "rspamd", f"milter socket {socket_path} does not answer: {error.strerror or error}")
    return Check("ok", "rspamd", f"milter socket {socket_path} answers")


def check_dkim(host: Host) -> Check:
    try:
        listed = host.path("/usr/share/oignons-mail-relay/dkim-keys").read_text(encoding="utf-8").splitlines()
    except OSError as error:
        return Check("fail", "dkim", f"no key list: {error}")
    keys = [line.split()[:2] for line in listed if line.strip() and not line.startswith("#")]
    missing = [f"{d}.{s}" for d, s in keys if not host.path(f"/var/lib/rspamd/dkim/{d}.{s}.key").is_file()]
    if missing:
        return Check("fail", "dkim", f"missing keys: {', '.join(missing)} (/usr/lib/oignons-mail-relay/dkim-keys make)")
    return Check("ok", "dkim", f"{len(keys)} key(s) present")


def check_resolver(host: Host) -> Check:
    try:
        text = host.path("/etc/resolv.conf").read_text(encoding="utf-8")
    except OSError as error:
        return Check("fail", "resolver", f"/etc/resolv.conf: {error}")
    servers = [line.split()[1] for line in text.splitlines() if line.startswith("nameserver") and len(line.split()) > 1]
    if not servers or any(s not in ("127.0.0.1", "::1") for s in servers):
        return Check("warn", "resolver", f"nameservers {' '.join(servers) or 'none'}: DANE needs only a local one")
    status, _ = host.command(["systemctl", "is-active", "--quiet", "unbound.service"])
    if status != 0:
        return Check("warn", "resolver", "the local nameserver is not unbound (DNSSEC validation unchecked)")
    return Check("ok", "resolver", "unbound on loopback")


def check_certificate(host: Host, now: float) -> Check:
    values = postconf(host, "smtpd_tls_cert_file")
    path = values.get("smtpd_tls_cert_file", "")
    status, output = host.command(["openssl", "x509", "-noout", "-enddate", "-in", str(host.path(path))])
    if status != 0 or "notAfter=" not in output:
        return Check("fail", "certificate", f"{path or 'smtpd_tls_cert_file'}: cannot be read")
    end_text = output.strip().partition("notAfter=")[2]
    try:
        end = datetime.strptime(end_text, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return Check("warn", "certificate", f"{path}: expiry {end_text!r} not understood")
    left = int(end - now)
    when = health.format_time(end)
    if left <= 0:
        return Check("fail", "certificate", f"{path} expired on {when}")
    if left < CERTIFICATE_WARN_SECONDS:
        return Check("warn", "certificate", f"{path} expires on {when} (in {health.duration_text(left)})")
    return Check("ok", "certificate", f"{path} valid until {when}")


def check_dns(host: Host, resolver: Callable[[], dns.Resolver] | None = None) -> Check:
    """`dns --check` of the installed site: fail on a record that contradicts it, warn on a missing or unsigned one.

    The records are published outside this host, so a record not there yet is
    a warning; one that says something else (a second SPF record, another
    TLSA) breaks mail: a failure.
    """
    installed = host.path(site.INSTALLED_RELAY_SITE)
    if not installed.is_file():
        return Check("warn", "dns", f"{site.INSTALLED_RELAY_SITE} is missing: not checked")
    try:
        the_site = site.load_site(installed)
        lookups = resolver() if resolver is not None else dns.resolver(None, timeout=DNS_TIMEOUT)
        findings = dns.site_check(the_site, lookups, host.path(str(dns.DKIM_KEY_DIRECTORY)))
    except ModuleNotFoundError:
        return Check("warn", "dns", "not checked: python3-dnspython is not installed (apt install python3-dnspython)")
    except UserMessageError as error:
        return Check("warn", "dns", f"not checked: {str(error).splitlines()[0]}")
    wrong = [f for f in findings if f.status != dns.FINE]
    if not wrong:
        return Check("ok", "dns", f"{len(findings)} records as oignons-mail dns prints them")
    named = ", ".join(f"{f.record.what} {f.status}" for f in wrong[:3]) + (", ..." if len(wrong) > 3 else "")
    level = "fail" if any(f.status == dns.DIFFERENT for f in wrong) else "warn"
    return Check(level, "dns", f"{len(wrong)} of {len(findings)} records not fine: {named} (oignons-mail dns --check)")


def queue_after_seconds(host: Host) -> int:
    """The site's threshold, from the rendered fleet settings when the relay has them."""
    try:
        config = json.loads(host.path(health.FLEET_CONFIG).read_text(encoding="utf-8"))
        return int(config["queue_after_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return site.postfix_time_seconds(site.FLEET_QUEUE_AFTER)


def checks(host: Host, now: float) -> list[Check]:
    role = host.role()
    if role is None:
        return [Check("fail", "package", "neither oignons-mail-relay nor oignons-mail-smarthost is installed")]
    queue, error = read_queue(host, now)
    found = [check_postfix(host), check_applied(host, role), check_queue(queue, error, queue_after_seconds(host))]
    if role == "smarthost":
        found.append(check_relay_pin(host, queue))
    else:
        found += [
            check_confinement(host),
            check_milter(host),
            check_dkim(host),
            check_resolver(host),
            check_certificate(host, now),
            check_dns(host),
        ]
    return found


def as_json(found: Sequence[Check]) -> str:
    return json.dumps([asdict(check) for check in found], indent=2) + "\n"


def failing(found: Sequence[Check]) -> list[str]:
    return [check.name for check in found if check.level == "fail"]
