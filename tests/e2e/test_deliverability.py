"""Mail that arrives: DANE for real, DKIM signatures that verify, `oignons-mail dns --check` (issue 10).

The test bed's zone for the site's own domains was built from `oignons-mail
dns` output (testbed.site_dns_lines).  Here the outside world gets a
DNSSEC-signed domain, signed.test, signed on the host with ldnsutils, served
and validated by the relay's unbound (auth-zone + trust anchor), whose MX is
the harness's SMTP sink, which offers STARTTLS with its own key: the relay's
Postfix (smtp_tls_security_level = dane) must verify the sink's key against
the zone's TLSA record, or keep the mail queued.
"""

from __future__ import annotations

import email.utils
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import spf  # type: ignore[import-untyped]  # python3-spf has no type hints

from oignons_mail import dns, pin
from tests.e2e.machines import (
    CLEAN_CLIENT_ADDRESS,
    RELAY_ADDRESS,
    RELAY_WORLD_ADDRESS,
    SINK_ADDRESS,
    reload_postfix,
    run,
    wait_until,
)
from tests.e2e.mail import (
    Sent,
    delivery_lines,
    final_reply,
    header,
    replies,
    sendmail,
    smtp_process,
    wait_for_delivery,
)
from tests.e2e.test_mail import swaks_message
from tests.e2e.testbed import (
    DKIM_DIRECTORY,
    DOMAIN,
    LIST_ADDRESS,
    LIST_ADMIN,
    OUTSIDE_DOMAIN,
    RELAY_HOSTNAME,
    RSPAMD_START_TIMEOUT,
    SINK_HOSTNAME,
    STRICT_DOMAIN,
    TEST_ALIAS,
    TOOL,
    TOOL_ENVIRONMENT,
    UNBOUND_TEST_CONF,
    Received,
    Testbed,
    new_message_id,
    wait_for_relay_services,
)
from tests.system.debian_system import MIRROR, cache_directory

# python3-dkim is an end-to-end dependency (make e2e-deps), not a build-dependency:
# without it, `make unit` collects this file and skips it.
dkim = pytest.importorskip("dkim")

SIGNED_DOMAIN = "signed.test"
SIGNED_MX = f"mx.{SIGNED_DOMAIN}"
SIGNED_ZONE_FILE = "/etc/unbound/oignons-e2e-signed.test.zone"
SIGNED_TRUST_ANCHOR = "/etc/unbound/oignons-e2e-signed.test.ds"
DANE_CONF = "/etc/unbound/unbound.conf.d/oignons-e2e-dane.conf"
DEFERRED_TIMEOUT = 90.0


# --- the signed zone ---------------------------------------------------------


@dataclass(frozen=True)
class SignedZone:
    """signed.test's keys (made once per test bed) and how to publish a TLSA record in it."""

    bed: Testbed
    directory: Path
    zone_signing_key: str  # ldns-keygen's base names
    key_signing_key: str

    def publish(self, tlsa: str) -> None:
        """Sign the zone with this TLSA for the sink's port 25, install it, restart unbound, wait until it validates."""
        zone = self.directory / "zone.db"
        zone.write_text(
            f"$ORIGIN {SIGNED_DOMAIN}.\n$TTL 60\n"
            f"@ IN SOA ns.{SIGNED_DOMAIN}. hostmaster.{SIGNED_DOMAIN}. 1 60 60 600 60\n"
            f"@ IN NS ns.{SIGNED_DOMAIN}.\nns IN A {SINK_ADDRESS}\n"
            f"@ IN MX 10 {SIGNED_MX}.\nmx IN A {SINK_ADDRESS}\n"
            f"_25._tcp.mx IN TLSA {tlsa}\n",
            encoding="utf-8",
        )
        keys = [str(self.directory / name) for name in (self.zone_signing_key, self.key_signing_key)]
        run(["ldns-signzone", "-f", f"{zone}.signed", str(zone), *keys]).check("ldns-signzone")
        relay = self.bed.relay
        root = relay.system.root
        shutil.copyfile(zone.with_name("zone.db.signed"), root / SIGNED_ZONE_FILE.lstrip("/"))
        shutil.copyfile(self.directory / f"{self.key_signing_key}.ds", root / SIGNED_TRUST_ANCHOR.lstrip("/"))
        (root / DANE_CONF.lstrip("/")).write_text(
            "# oignons-mail e2e: a DNSSEC-signed outside domain (test harness, not the package).\n"
            "server:\n"
            f'    trust-anchor-file: "{SIGNED_TRUST_ANCHOR}"\n'
            "auth-zone:\n"
            f'    name: "{SIGNED_DOMAIN}."\n'
            f'    zonefile: "{SIGNED_ZONE_FILE}"\n'
            "    for-downstream: no\n"
            "    for-upstream: yes\n"
            "    fallback-enabled: no\n",
            encoding="utf-8",
        )
        relay.check("chmod 0644 /etc/unbound/oignons-e2e-* && systemctl restart unbound", timeout=60)
        expected = tlsa.rsplit(maxsplit=1)[-1].lower()

        def validated() -> bool | None:
            answer = relay.run(f"dig +dnssec +time=2 +tries=1 TLSA _25._tcp.{SIGNED_MX} @127.0.0.1").stdout
            flags = re.search(r";; flags: ([a-z ]+);", answer)
            secure = flags is not None and "ad" in flags.group(1).split()
            return True if secure and expected in answer.replace(" ", "").lower() else None

        wait_until(
            f"unbound to validate the TLSA record of {SIGNED_MX}",
            validated,
            60,
            diagnose=relay.run(f"dig +dnssec TLSA _25._tcp.{SIGNED_MX} @127.0.0.1; journalctl -u unbound -n 30").stdout,
        )
        # smtp(8) keeps TLSA answers for their TTL: new processes must see the new record.
        reload_postfix(relay)


@pytest.fixture(scope="module")
def signed_zone(bed: Testbed) -> SignedZone:
    directory = bed.run_directory / "dnssec"
    directory.mkdir(exist_ok=True)

    def keygen(*options: str) -> str:
        # ldns-keygen writes its files into the current directory.
        command = f"cd {shlex.quote(str(directory))} && ldns-keygen -a ED25519 {' '.join(options)} {SIGNED_DOMAIN}"
        return run(["sh", "-c", command]).check("ldns-keygen").stdout.strip()

    zone = SignedZone(bed, directory, keygen(), keygen("-k"))
    # Postfix probes DNSSEC at start (dnssec_probe, default ns:.): offline, the
    # probe must ask a zone that exists and validates in the test network.
    reload_postfix(bed.relay, f"postconf -e dnssec_probe=ns:{SIGNED_DOMAIN}")
    return zone


def sink_tlsa(bed: Testbed) -> str:
    return dns.tlsa_value(pin.subject_public_key_info(pin.certificate_from_file(bed.sink.key.certificate)))


def relay_log_lines(bed: Testbed, sent: Sent) -> list[str]:
    return delivery_lines(bed.mail_log(bed.relay), sent.message_id)


def tls_lines_of(bed: Testbed, line: str, kind: str, host: str) -> list[str]:
    """The `KIND TLS connection established to HOST[...]` lines of the smtp(8) process that wrote line."""
    wanted = f" {smtp_process(line)}: {kind} TLS connection established to {host}["
    return [entry for entry in bed.mail_log(bed.relay).splitlines() if wanted in entry]


def stored(bed: Testbed, sent: Sent) -> list[Received]:
    return [m for m in bed.sink.messages() if sent.token in m.data]


def assert_stored_over_tls(bed: Testbed, sent: Sent, why: str) -> None:
    """The sink stored the message (at least once), and every copy came over TLS."""
    received = stored(bed, sent)
    assert received != [], f"the sink stored no copy of {sent.message_id}"
    assert all(m.tls for m in received), why


# --- DANE ------------------------------------------------------------------------


def test_matching_tlsa_gives_a_verified_tls_delivery(bed: Testbed, signed_zone: SignedZone) -> None:
    signed_zone.publish(sink_tlsa(bed))
    sent = sendmail(bed.relay, f"dane-match@{SIGNED_DOMAIN}", "dane-match")
    line = wait_for_delivery(bed, bed.relay, sent.message_id, r"to=<dane-match@signed\.test>.*status=sent")
    verified = tls_lines_of(bed, line, "Verified", SIGNED_MX)
    assert any(f"Verified TLS connection established to {SIGNED_MX}[{SINK_ADDRESS}]:25" in v for v in verified), line
    bed.notes.append(f"DANE match ({bed.name}): {verified[0]}")
    bed.notes.append(f"DANE match ({bed.name}): {line}")
    assert [m.tls for m in stored(bed, sent)] != [""], "the sink received the message in clear"
    # What `dns --check` reads: the AD bit of a validating resolver, set for the signed zone only.
    assert tlsa_validated(bed, f"_25._tcp.{SIGNED_MX}.") == "validated"
    assert tlsa_validated(bed, f"_25._tcp.{RELAY_HOSTNAME}.") == "not validated"


def tlsa_validated(bed: Testbed, name: str) -> str:
    """Whether the check's resolver (dns.resolver) finds this TLSA answer DNSSEC-validated by the relay's unbound."""
    program = (
        "import sys; from oignons_mail import dns; r = dns.resolver('127.0.0.1'); "
        "found = r.lookup(sys.argv[1], 'TLSA'); "
        "print('validated' if found and r.validated(sys.argv[1], 'TLSA') else 'not validated' if found else 'none')"
    )
    result = bed.network.execute(
        bed.network.relay,
        ["env", *(f"{k}={v}" for k, v in TOOL_ENVIRONMENT.items()), TOOL[0], "-c", program, name],
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_wrong_tlsa_defers_and_the_fixed_record_delivers(bed: Testbed, signed_zone: SignedZone) -> None:
    wrong = dns.tlsa_value(b"not the sink's key")
    signed_zone.publish(wrong)
    sent = sendmail(bed.relay, f"dane-wrong@{SIGNED_DOMAIN}", "dane-wrong")
    deferred = wait_for_delivery(bed, bed.relay, sent.message_id, r"to=<dane-wrong@signed\.test>.*status=deferred")
    assert "Server certificate not verified" in deferred, deferred
    failures = [e for e in bed.mail_log(bed.relay).splitlines() if "no matching DANE TLSA records" in e]
    assert failures, "no 'no matching DANE TLSA records' line on the relay"
    assert stored(bed, sent) == [], "the message reached the sink although its key does not match"
    bed.notes.append(f"DANE mismatch ({bed.name}): {failures[-1]}")
    bed.notes.append(f"DANE mismatch ({bed.name}): {deferred}")

    signed_zone.publish(sink_tlsa(bed))
    bed.relay.check("postqueue -f")
    line = wait_for_delivery(bed, bed.relay, sent.message_id, r"to=<dane-wrong@signed\.test>.*status=sent")
    assert tls_lines_of(bed, line, "Verified", SIGNED_MX), line
    assert_stored_over_tls(bed, sent, "delivered in clear")
    bed.notes.append(f"DANE fixed ({bed.name}): {line}")


def test_unsigned_domain_gets_opportunistic_tls(bed: Testbed, signed_zone: SignedZone) -> None:
    sent = sendmail(bed.relay, f"unsigned@{OUTSIDE_DOMAIN}", "unsigned")
    line = wait_for_delivery(bed, bed.relay, sent.message_id, r"to=<unsigned@elsewhere\.test>.*status=sent")
    untrusted = tls_lines_of(bed, line, "Untrusted", SINK_HOSTNAME)
    assert untrusted, f"no 'Untrusted TLS connection' line for {line}"
    assert not tls_lines_of(bed, line, "Verified", SINK_HOSTNAME), line
    assert_stored_over_tls(bed, sent, "the sink offers STARTTLS: the relay must use it")
    bed.notes.append(f"unsigned domain ({bed.name}): {untrusted[0]}")
    bed.notes.append(f"unsigned domain ({bed.name}): {line}")


# --- the site's own records --------------------------------------------------------


def dns_check(bed: Testbed) -> tuple[int, str]:
    """`oignons-mail dns --check` against the relay's unbound, from the relay's network namespace."""
    result = bed.network.execute(
        bed.network.relay,
        ["env", *(f"{k}={v}" for k, v in TOOL_ENVIRONMENT.items()), *TOOL, "dns",
         "--site", str(bed.artifacts.site_file), "--cert", str(bed.artifacts.relay_key.certificate),
         "--dkim-dir", str(bed.relay.system.root / "var/lib/rspamd/dkim"), "--check", "--server", "127.0.0.1"],
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


# The relay's own TLSA records, as the test zone serves them (built from
# `oignons-mail dns`), checked by a verifier that is not ours: OpenSSL's DANE
# code hashes the certificate's key itself and matches it against the record.
# DANE-EE (usage 3) ignores the certificate's names (RFC 7672, 3.1.1), as
# Postfix does: hence -dane_ee_no_namechecks.
DANE_CLIENT = (
    "timeout 30 openssl s_client -connect {address}:{port} {starttls} -dane_tlsa_domain {name} "
    "-dane_ee_no_namechecks -dane_tlsa_rrdata {record} -verify_return_error </dev/null 2>&1"
)


def dane_verification(bed: Testbed, port: int, record: str) -> str:
    """What openssl s_client says of the relay's certificate on this port, against this TLSA record.

    "verified", or the end of its output when it did not verify.
    """
    starttls = "-starttls smtp" if port == 25 else ""
    script = DANE_CLIENT.format(address=RELAY_WORLD_ADDRESS, port=port, starttls=starttls,
                                name=RELAY_HOSTNAME, record=shlex.quote(record))  # fmt: skip
    output = bed.world(["sh", "-c", script], 60).stdout
    # s_client prints the matched digest's end: "DANE TLSA 3 1 1 ...<hex> matched EE certificate".
    matched = re.search(r"^DANE TLSA 3 1 1 \.*([0-9a-f]+) matched EE certificate at depth 0$", output, re.M)
    ok = re.search(r"^Verification: OK$", output, re.M)
    if ok and matched and record.lower().endswith(matched.group(1)):
        return "verified"
    return output[-1500:]


@pytest.mark.parametrize("port", dns.TLSA_PORTS)
def test_the_published_tlsa_record_matches_the_relays_live_key(bed: Testbed, port: int) -> None:
    name = f"_{port}._tcp.{RELAY_HOSTNAME}"
    served = bed.relay.run(f"dig +short +time=2 +tries=2 TLSA {name} @127.0.0.1").stdout
    # dig prints the digest in chunks: "3 1 1 8A9A7059... D86F300A...".
    records = [line.split(maxsplit=3) for line in served.splitlines() if line.strip()]
    assert records, f"no TLSA record served for {name}"
    for usage, selector, matching, chunks in records:
        assert (usage, selector, matching) == ("3", "1", "1"), served
        digest = "".join(chunks.split())
        assert dane_verification(bed, port, f"3 1 1 {digest}") == "verified", served
        # The negative control: one digit changed, and the same client refuses.
        wrong = f"3 1 1 {digest[:-1]}{'1' if digest[-1] == '0' else '0'}"
        assert dane_verification(bed, port, wrong) != "verified", wrong
    bed.notes.append(f"TLSA of {name} ({bed.name}): {len(records)} record(s) verified by openssl s_client")


def check_statuses(output: str) -> dict[str, str]:
    """`dns --check` output as {what: status}, from its finding lines (the status, then `what: name type`)."""
    found = re.findall(r"^(fine|missing|different|unsigned) +(.+?): \S+ [A-Z]+", output, re.M)
    return {what: status for status, what in found}


def test_dns_check_passes_and_names_a_removed_record(bed: Testbed) -> None:
    """Every record fine but the TLSA (the site's test zone is not signed); then four faults, each named."""
    status, output = dns_check(bed)
    assert status == 1, output
    before = check_statuses(output)
    not_fine = {what: s for what, s in before.items() if s != "fine"}
    assert not_fine == {f"TLSA of {RELAY_HOSTNAME} port {port}": "unsigned" for port in dns.TLSA_PORTS}, output
    assert before[f"reverse DNS of {RELAY_ADDRESS} ({RELAY_HOSTNAME})"] == "fine", output
    assert before[f"SPF of {DOMAIN}"] == before[f"DMARC of {DOMAIN}"] == "fine", output
    bed.notes.append(f"dns --check ({bed.name}): {output.strip().splitlines()[-1]}")

    conf = bed.relay.system.root / UNBOUND_TEST_CONF.lstrip("/")
    original = conf.read_text(encoding="utf-8")
    removed = (f"local-data: '{f'bulbe1._domainkey.{DOMAIN}.'}", f'local-data-ptr: "{RELAY_ADDRESS} ')
    kept = [line for line in original.splitlines() if not line.strip().startswith(removed)]
    assert len(kept) == len(original.splitlines()) - 2, f"no DKIM or PTR line to remove in {UNBOUND_TEST_CONF}"
    # A second SPF and a second DMARC record: receivers then use neither.
    kept += [
        f"    local-data: '{DOMAIN}. TXT \"v=spf1 a -all\"'",
        f"    local-data: '_dmarc.{DOMAIN}. TXT \"v=DMARC1; p=reject\"'",
    ]
    try:
        conf.write_text("\n".join(kept) + "\n", encoding="utf-8")
        bed.relay.check("systemctl restart unbound", timeout=60)
        status, output = dns_check(bed)
        assert status == 1, output
        after = check_statuses(output)
        changed = {what: s for what, s in after.items() if s != before[what]}
        assert changed == {
            f"DKIM key bulbe1 of {DOMAIN}": "missing",
            f"SPF of {DOMAIN}": "different",
            f"DMARC of {DOMAIN}": "different",
            f"reverse DNS of {RELAY_ADDRESS} ({RELAY_HOSTNAME})": "missing",
        }, output
        bed.notes.append(f"dns --check, four faults ({bed.name}): {output.strip().splitlines()[-1]}")
    finally:
        conf.write_text(original, encoding="utf-8")
        bed.relay.check("systemctl restart unbound", timeout=60)


# --- DKIM ----------------------------------------------------------------------------


def published_txt(bed: Testbed, name: str) -> bytes:
    """A TXT record as the relay's unbound publishes it (the strings joined)."""
    answer = bed.relay.check(f"dig +short +time=2 +tries=1 TXT {name} @127.0.0.1")
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', answer)).encode("ascii")


def txt_lookup(bed: Testbed) -> Callable[..., bytes]:
    """dkimpy's dnsfunc: TXT records as the relay's unbound publishes them."""

    def lookup(name: bytes | str, timeout: int = 5) -> bytes:
        return published_txt(bed, name.decode("ascii") if isinstance(name, bytes) else name)

    return lookup


def verify_dkim(bed: Testbed, message: Received) -> str:
    """Verify the message's DKIM signature against the published key; the signature's d= and s=."""
    data = message.data.replace("\n", "\r\n").encode("utf-8")
    signature = re.search(r"(?ms)^DKIM-Signature:.*?(?=^\S)", message.data)
    assert signature is not None, f"no DKIM-Signature header:\n{message.data[:2000]}"
    assert dkim.verify(data, dnsfunc=txt_lookup(bed)), f"the DKIM signature does not verify:\n{signature.group(0)}"
    tags = dict(re.findall(r"\b([ds])=([^;\s]+)", signature.group(0)))
    return f"d={tags.get('d')} s={tags.get('s')}"


def decrypt(bed: Testbed, data: str) -> str:
    armored = re.search(r"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", data, re.S)
    if armored is None:
        return ""
    return bed.relay.run("GNUPGHOME=/root/e2e-gnupg gpg --batch --quiet --decrypt", input_text=armored.group(0)).stdout


def test_list_mail_from_a_node_arrives_with_a_dkim_signature_that_verifies(bed: Testbed) -> None:
    if bed.schleuder_error:
        pytest.fail(f"no Schleuder list to deliver to: {bed.schleuder_error}")
    sent = sendmail(bed.smarthost, "root", "dkim-list")
    received = bed.sink.wait_for(
        f"Schleuder's copy for {LIST_ADMIN}",
        lambda m: LIST_ADMIN in m.rcpt_to and sent.token in decrypt(bed, m.data),
        150,
    )
    signer = verify_dkim(bed, received)
    assert signer == f"d={DOMAIN} s={bed.artifacts.site.dkim.selector}", signer
    assert LIST_ADDRESS.split("@")[0] in received.data.split("\n\n")[0], "not sent by the list"
    bed.notes.append(f"DKIM of the list's copy ({bed.name}): verifies, {signer}")


# What a stranger's References would have the signed reply carry (docs/open-internet.md).
STRANGERS_REFERENCES = "<visit-evil.example-for-the-association@evil.example> <another@evil.example>"


def test_responder_reply_has_a_dkim_signature_that_verifies(bed: Testbed) -> None:
    """Signed with the site's key, and of the stranger's message only its own msg-id, to thread the reply."""
    sender = f"dkim-donor@{OUTSIDE_DOMAIN}"
    arguments, message_id = swaks_message(
        "dkim-dons", sender, f"dons@{DOMAIN}", "--header", f"References: {STRANGERS_REFERENCES}"
    )
    bed.swaks(*arguments).check("swaks to dons@")
    reply = bed.sink.wait_for(f"the responder's reply to {sender}", lambda m: sender in m.rcpt_to, 90)
    signer = verify_dkim(bed, reply)
    assert signer == f"d={DOMAIN} s={bed.artifacts.site.dkim.selector}", signer
    assert header(reply.data, "In-Reply-To") == f"<{message_id}>", reply.data[:3000]
    assert header(reply.data, "References") == f"<{message_id}>", reply.data[:3000]
    assert "evil.example" not in reply.data, reply.data[:3000]
    bed.notes.append(f"DKIM of the responder's reply ({bed.name}): verifies, {signer}")


def test_rspamd_makes_missing_dkim_keys_when_it_starts(bed: Testbed) -> None:
    """The relay's drop-in for rspamd.service: rspamd installed after the relay package has its keys once it starts.

    The keys are moved aside (as if rspamd had come later and our trigger had
    run before its postinst made _rspamd), rspamd is restarted, then the keys
    are put back for the other tests.
    """
    directory, aside, restart = f"/{DKIM_DIRECTORY}", "/root/dkim-aside", "systemctl restart rspamd.service"
    before = bed.relay.check(f"cd {directory} && ls *.key").split()
    assert before, f"no DKIM key in {directory}"
    bed.relay.check(f"rm -rf {aside} && mkdir {aside} && mv {directory}/* {aside}/")
    try:
        bed.relay.check(restart, timeout=RSPAMD_START_TIMEOUT)
        made = bed.relay.check(f"cd {directory} && stat -c '%n %U:%G %a' *.key").splitlines()
        fresh = bed.relay.run(f"cd {directory} && for k in *.key; do cmp -s $k {aside}/$k || echo $k; done").stdout
    finally:
        bed.relay.check(f"mv -f {aside}/* {directory}/ && {restart}", timeout=RSPAMD_START_TIMEOUT)
        wait_for_relay_services(bed)
    assert made == [f"{key} _rspamd:_rspamd 640" for key in before], made
    assert fresh.split() == before, "the keys after the restart are the old ones: nothing made them"


# --- Forwarding: SRS, and the nodes' mail to the outside ----------------------------

STRICT_SENDER = f"sender@{STRICT_DOMAIN}"
# postsrsd 1.x: SRS0=HASH=TT=domain=local@SRS_DOMAIN (the site's domain).
SRS_SENDER_RE = re.compile(rf"SRS0=[^=@]+=[^=@]+={re.escape(STRICT_DOMAIN)}=sender@{re.escape(DOMAIN)}")
APT_TIMEOUT = 600.0


def debian_deb(release: str, package: str, directory: Path) -> Path:
    """`package` of `release` from Debian's archive: apt-get download, with that release's lists in `directory`."""
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    sources = directory / "sources.list"
    sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {release} main\n")
    options = (
        f"-oDir::Etc::SourceList={sources} -oDir::Etc::SourceParts=/nonexistent -oDir::State::Lists={directory}/lists"
        f" -oDir::Cache={directory}/cache -oAPT::Sandbox::User=root"
    )
    found = sorted((directory / "debs").glob(f"{package}_*.deb"))
    if not found:
        command = f"apt-get {options} update -qq && cd {directory}/debs && apt-get {options} download {package}"
        # The archive is the one thing here across the network: a second try before the test gives up.
        first = run(["sh", "-c", command], timeout=APT_TIMEOUT)
        if first.returncode != 0:
            run(["sh", "-c", command], timeout=APT_TIMEOUT).check(f"apt-get download {package} ({release})")
        found = sorted((directory / "debs").glob(f"{package}_*.deb"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def postsrsd(bed: Testbed) -> None:
    """postsrsd installed on the relay after the relay package (the package's trigger adds the SRS settings)."""
    if bed.relay.check("dpkg-query -W -f='${db:Status-Status}' postsrsd 2>/dev/null || true").strip() == "installed":
        return
    # Without postsrsd, Postfix names none of its tables (an unreachable one would defer mail).
    absent = bed.relay.check("postconf -h recipient_canonical_maps oignons_srs_sender_maps")
    assert absent.split() == [], f"postsrsd's tables set while postsrsd is absent: {absent}"
    deb = debian_deb(bed.relay.release, "postsrsd", WORK_APT / bed.relay.release)
    shutil.copyfile(deb, bed.relay.system.root / "root/postsrsd.deb")
    log = bed.relay.check("DEBIAN_FRONTEND=noninteractive dpkg -i /root/postsrsd.deb 2>&1", timeout=300)
    bed.notes.append(f"postsrsd installed ({bed.name}): {deb.name}")
    settings = bed.relay.check("postconf -h recipient_canonical_maps oignons_srs_sender_maps")
    assert settings.split() == ["tcp:127.0.0.1:10002", "tcp:127.0.0.1:10001"], f"{settings}\n{log}"
    # Through postsrsd (the package's launcher: the site's SRS domain), as Postfix asks it.
    wait_until(
        "postsrsd to rewrite a sender on 127.0.0.1:10001",
        lambda: (
            True if f"@{DOMAIN}" in bed.relay.run("postmap -q someone@example.org tcp:127.0.0.1:10001").stdout else None
        ),
        60,
        diagnose=bed.relay.run("systemctl status postsrsd; journalctl -u postsrsd -n 20").stdout,
    )


# Kept with the base systems (one download per machine and release, not per checkout).
WORK_APT = cache_directory() / "e2e-apt"


def spf_result(bed: Testbed, client: str, sender: str, helo: str) -> str:
    """pyspf's verdict for MAIL FROM:<sender> from `client`, every query answered by the relay's unbound."""

    def lookup(name: object, qtype: str, *_: object, **__: object) -> list[tuple[tuple[str, str], object]]:
        text = str(name).rstrip(".")
        answer = bed.relay.check(f"dig +short +time=2 +tries=1 {qtype} {shlex.quote(text)} @127.0.0.1")
        values: list[tuple[tuple[str, str], object]] = []
        for line in answer.splitlines():
            if qtype in ("TXT", "SPF"):
                strings = [s.encode() for s in re.findall(r'"((?:[^"\\]|\\.)*)"', line)]
                values.append(((text, qtype), strings))
            elif qtype == "MX":
                preference, host = line.split()
                values.append(((text, qtype), (int(preference), host.rstrip("."))))
            elif qtype == "PTR":
                values.append(((text, qtype), line.rstrip(".")))
            else:
                values.append(((text, qtype), line))
        return values

    original = spf.DNSLookup
    spf.DNSLookup = lookup
    try:
        result, _explanation = spf.check2(i=client, s=sender, h=helo)
    finally:
        spf.DNSLookup = original
    return str(result)


def verify_arc(bed: Testbed, message: Received) -> str:
    """Verify the message's ARC chain (dkimpy) against the published keys; the last seal's i=, d=, s=, cv=."""
    data = message.data.replace("\n", "\r\n").encode("utf-8")
    seals = re.findall(r"(?ms)^ARC-Seal:.*?(?=^\S)", message.data)
    assert seals, f"no ARC-Seal header:\n{message.data[:3000]}"
    chain, results, reason = dkim.arc_verify(data, dnsfunc=txt_lookup(bed))
    assert chain == dkim.CV_Pass, f"the ARC chain does not verify ({chain!r}: {reason}; {results})\n{seals}"
    tags = dict(re.findall(r"\b(i|d|s|cv)=([^;\s]+)", seals[-1]))
    return " ".join(f"{k}={tags.get(k)}" for k in ("i", "d", "s", "cv"))


def header_domain(data: str, name: str) -> str:
    found = re.search(rf"^{name}:.*?@([^>\s]+)", data, re.M | re.I)
    assert found is not None, f"no {name}: address in\n{data[:2000]}"
    return found.group(1).lower()


# The strict sender's own DKIM key (the signed case): the harness's, published by the relay's unbound.
STRICT_SELECTOR = "e2e"
STRICT_DKIM_CONF = "/etc/unbound/unbound.conf.d/oignons-e2e-strict-dkim.conf"


@pytest.fixture(scope="module")
def strict_dkim_key(bed: Testbed) -> bytes:
    """A PEM RSA key of the strict outside domain, its public half at e2e._domainkey.strict.elsewhere.test.

    The record goes into a file of its own beside the test zone (local-data
    of the static zone elsewhere.test), and stays for the rest of the bed.
    """
    directory = bed.run_directory / "strict-dkim"
    directory.mkdir(exist_ok=True)
    key = directory / f"{STRICT_SELECTOR}.key"
    run(["openssl", "genrsa", "-out", str(key), "2048"]).check("openssl genrsa")
    public = run(["openssl", "rsa", "-in", str(key), "-pubout"]).check("openssl rsa -pubout").stdout
    value = "v=DKIM1; k=rsa; p=" + "".join(line for line in public.splitlines() if not line.startswith("-----"))
    name = f"{STRICT_SELECTOR}._domainkey.{STRICT_DOMAIN}"
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    conf = bed.relay.system.root / STRICT_DKIM_CONF.lstrip("/")
    conf.write_text(
        f"# oignons-mail e2e: {STRICT_DOMAIN}'s DKIM key (test harness, not the package).\n"
        f"server:\n    local-data: '{name}. TXT {strings}'\n",
        encoding="utf-8",
    )
    bed.relay.check(f"chmod 0644 {STRICT_DKIM_CONF} && systemctl restart unbound", timeout=60)
    wait_until(
        f"the relay's unbound to publish {name}",
        lambda: True if published_txt(bed, name) == value.encode("ascii") else None,
        60,
    )
    return key.read_bytes()


def strict_message(message_id: str, key: bytes | None) -> bytes:
    """A message from the strict sender to the test alias; DKIM-signed by its domain (relaxed/relaxed) with `key`."""
    user, _ = TEST_ALIAS
    text = (
        f"From: <{STRICT_SENDER}>\r\nTo: <{user}@{DOMAIN}>\r\nSubject: SRS test\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-Id: <{message_id}>\r\n\r\n"
        f"SRS test\r\nToken: {message_id.partition('@')[0]}\r\n"
    ).encode("ascii")
    if key is None:
        return text
    relaxed = (b"relaxed", b"relaxed")
    signature = dkim.sign(text, STRICT_SELECTOR.encode(), STRICT_DOMAIN.encode(), key, canonicalize=relaxed)
    return bytes(signature) + text


def forward_from_strict(bed: Testbed, label: str, key: bytes | None) -> Received:
    """The strict sender's message (signed with `key`, if any) to the test alias, as the sink received it.

    Checked here: the SRS envelope sender, SPF at the sink (pass for it, fail
    for the original sender from the relay), and the relay's ARC seal.
    """
    user, target = TEST_ALIAS
    message_id = new_message_id(label)
    data = bed.run_directory / f"{label}.eml"
    data.write_bytes(strict_message(message_id, key))
    result = bed.swaks("--from", STRICT_SENDER, "--to", f"{user}@{DOMAIN}", "--data", str(data),
                       source=CLEAN_CLIENT_ADDRESS)  # fmt: skip
    assert final_reply(result.stdout, "250 2.0.0"), f"not accepted:\n{result.stdout[-2000:]}"
    received = bed.sink.wait_for(f"the forwarded message at {target}", lambda m: message_id in m.data, 90)
    assert SRS_SENDER_RE.fullmatch(received.mail_from), received.mail_from
    # SPF at the receiver: the SRS sender passes from the relay, the original sender would fail.
    assert received.peer == RELAY_WORLD_ADDRESS, received.peer
    assert spf_result(bed, received.peer, received.mail_from, RELAY_HOSTNAME) == "pass"
    assert spf_result(bed, received.peer, STRICT_SENDER, RELAY_HOSTNAME) == "fail"
    assert spf_result(bed, CLEAN_CLIENT_ADDRESS, STRICT_SENDER, "client.elsewhere.test") == "pass"
    bed.notes.append(f"SRS, {label} ({bed.name}): MAIL FROM:<{received.mail_from}>, SPF pass from {received.peer}")
    # The relay sealed what it received (ARC): the next receiver can trust the results it saw.
    seal = verify_arc(bed, received)
    assert seal == f"i=1 d={DOMAIN} s=arc cv=none", seal
    bed.notes.append(f"ARC, {label} ({bed.name}): verifies, {seal}; {arc_results(received)}")
    return received


def arc_results(message: Received) -> str:
    """The relay's ARC-Authentication-Results (what it saw on arrival), unfolded."""
    found = re.search(r"(?ms)^ARC-Authentication-Results:(.*?)(?=^\S)", message.data)
    assert found is not None, f"no ARC-Authentication-Results header:\n{message.data[:3000]}"
    return " ".join(found.group(1).split())


def organisational_domain(domain: str) -> str:
    """RFC 7489 3.2's organisational domain, simplified: the last two labels.

    Enough for the test zones (no public suffix of more than one label:
    test, net); a real receiver uses the Public Suffix List.
    """
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def dmarc_verdict(bed: Testbed, message: Received) -> str:
    """DMARC (RFC 7489) at the sink, from pyspf's result, dkimpy's verification and the record of the test DNS.

    `dmarc=pass|fail (...) p=POLICY`: pass when SPF passes for an envelope
    domain aligned with the From: domain, or a DKIM signature verifies with a
    d= aligned with it (relaxed: same organisational domain, strict: equal;
    adkim= and aspf= of the record).
    """
    from_domain = header_domain(message.data, "From")
    record = published_txt(bed, f"_dmarc.{from_domain}") or published_txt(
        bed, f"_dmarc.{organisational_domain(from_domain)}"
    )
    assert record.startswith(b"v=DMARC1"), f"no DMARC record for {from_domain}: {record!r}"
    tags = dict(re.findall(r"(\w+)\s*=\s*([^;\s]+)", record.decode("ascii")))

    def aligned(domain: str, mode: str) -> bool:
        if mode == "s":
            return domain.lower() == from_domain
        return organisational_domain(domain) == organisational_domain(from_domain)

    envelope_domain = message.mail_from.rpartition("@")[2].lower()
    spf_verdict = spf_result(bed, message.peer, message.mail_from, RELAY_HOSTNAME)
    spf_aligned = spf_verdict == "pass" and aligned(envelope_domain, tags.get("aspf", "r"))
    data = message.data.replace("\n", "\r\n").encode("utf-8")
    signatures = re.findall(r"(?ms)^DKIM-Signature:.*?(?=^\S)", message.data)
    dkim_found = []
    for index, signature in enumerate(signatures):
        signer = dict(re.findall(r"\b([ds])=([^;\s]+)", signature)).get("d", "")
        verified = dkim.DKIM(data).verify(idx=index, dnsfunc=txt_lookup(bed))
        dkim_found.append((signer, bool(verified) and aligned(signer, tags.get("adkim", "r"))))
    passed = spf_aligned or any(ok for _, ok in dkim_found)
    details = [f"spf={spf_verdict} smtp.mailfrom={envelope_domain} {'aligned' if spf_aligned else 'not aligned'}"]
    details += [f"dkim d={d} {'pass, aligned' if ok else 'not pass or not aligned'}" for d, ok in dkim_found] or [
        "no dkim"
    ]
    return f"dmarc={'pass' if passed else 'fail'} header.from={from_domain} ({'; '.join(details)}) p={tags.get('p')}"


def test_forwarded_mail_of_a_strict_domain_leaves_with_an_srs_sender_that_passes_spf(
    bed: Testbed, postsrsd: None
) -> None:
    """Without the sender's DKIM signature: SRS, SPF pass, ARC; DMARC of the From: domain fails (ARC is left)."""
    received = forward_from_strict(bed, "srs", None)
    verdict = dmarc_verdict(bed, received)
    assert verdict.startswith("dmarc=fail "), verdict
    bed.notes.append(f"DMARC at the sink, forwarded unsigned ({bed.name}): {verdict}")

    # A bounce to the SRS address reaches the original sender (whose MX is the sink too).
    bounce_id = new_message_id("srs-bounce")
    bounce = bed.swaks(
        "--from", "<>", "--to", received.mail_from, "--header", f"Message-Id: <{bounce_id}>",
        "--body", f"a bounce\nToken: {bounce_id.split('@')[0]}\n",
    )  # fmt: skip
    assert final_reply(bounce.stdout, "250 2.0.0"), f"the bounce was not accepted:\n{bounce.stdout[-2000:]}"
    back = bed.sink.wait_for(f"the bounce at {STRICT_SENDER}", lambda m: bounce_id in m.data, 90)
    assert back.rcpt_to == [STRICT_SENDER], back.rcpt_to


def test_forwarded_mail_keeps_the_strict_senders_dkim_signature_and_passes_dmarc(
    bed: Testbed, postsrsd: None, strict_dkim_key: bytes
) -> None:
    """With the sender's own DKIM signature: the relay changes nothing it signed; DMARC passes through DKIM."""
    received = forward_from_strict(bed, "srs-signed", strict_dkim_key)
    signer = verify_dkim(bed, received)
    assert signer == f"d={STRICT_DOMAIN} s={STRICT_SELECTOR}", signer
    bed.notes.append(f"DKIM of the forwarded signed copy ({bed.name}): verifies, {signer}")
    # What the relay saw on arrival, sealed: the signature verified there too.
    results = arc_results(received)
    assert re.search(rf"\bdkim=pass\b[^;]*header\.d={re.escape(STRICT_DOMAIN)}", results), results
    verdict = dmarc_verdict(bed, received)
    assert verdict.startswith("dmarc=pass "), verdict
    assert f"dkim d={STRICT_DOMAIN} pass, aligned" in verdict, verdict
    bed.notes.append(f"DMARC at the sink, forwarded signed ({bed.name}): {verdict}")


def test_a_forged_srs_address_is_refused_at_rcpt(bed: Testbed, postsrsd: None) -> None:
    forged = f"SRS0=AAAA=ZZ={STRICT_DOMAIN}=sender@{DOMAIN}"
    result = bed.swaks("--from", "<>", "--to", forged, "--quit-after", "RCPT")
    reply = final_reply(result.stdout, "5")
    assert reply is not None, f"expected 550 at RCPT, got {replies(result.stdout)}"
    assert reply.startswith("550"), reply
    bed.notes.append(f"forged SRS address ({bed.name}): {reply}")


def test_a_node_mail_to_the_outside_passes_spf_aligned_with_its_from(bed: Testbed) -> None:
    recipient = f"node-spf@{OUTSIDE_DOMAIN}"
    sent = sendmail(bed.smarthost, recipient, "node-spf")
    received = bed.sink.wait_for(f"the node's message at {recipient}", lambda m: sent.token in m.data, 120)
    envelope_domain = received.mail_from.rpartition("@")[2].lower()
    assert envelope_domain == header_domain(received.data, "From"), received.mail_from
    assert spf_result(bed, received.peer, received.mail_from, RELAY_HOSTNAME) == "pass", received.mail_from
    bed.notes.append(f"node mail ({bed.name}): MAIL FROM:<{received.mail_from}> SPF pass from {received.peer}")
    verdict = dmarc_verdict(bed, received)
    assert verdict.startswith("dmarc=pass "), verdict
    bed.notes.append(f"DMARC at the sink, node mail ({bed.name}): {verdict}")
