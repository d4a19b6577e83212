"""An outside attacker against the booted relay (issue 12), on both runs.

Every client here is in the "world" namespace, outside mynetworks, without a
node's certificate: what anyone on the Internet can try.  Each case asserts
on what the relay did (its mail log, its queue, the sink), not only on the
SMTP replies.  Each case also notes the server's answers in the run's
report (build/e2e/report.txt).  The cases run in this file's order on one
test bed per pair; the mail-loop case deletes the machines list and runs last.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.machines import CLEAN_CLIENT_ADDRESS, RELAY_WORLD_ADDRESS, SINK_ADDRESS, anvil_exemption, wait_until
from tests.e2e.mail import Transcript, header, raw_smtp, reply_to, sendmail
from tests.e2e.testbed import (
    DOMAIN,
    LIST_ADDRESS,
    OUTSIDE_DOMAIN,
    SMARTHOST_HOSTNAME,
    TEST_ALIAS,
    Testbed,
    new_message_id,
)
from tests.system.debian_system import COMMAND_ENVIRONMENT

SENDER = f"sender@{OUTSIDE_DOMAIN}"
EHLO = ("EHLO attacker.elsewhere.test\r\n", 1)
QUIT = ("QUIT\r\n", 1)
# How long a message that must NOT be delivered is given to arrive anyway.
QUIET_SECONDS = 5.0
# Addresses of the world namespace used only here, so that anvil's counts of
# the other clients stay untouched.
RATE_ATTACKER_ADDRESS = "10.237.1.9"
MESSAGE_ATTACKER_ADDRESS = "10.237.1.10"
# The site's anvil limits (sites/nos-oignons.toml, [relay.client_limits]).
CONNECTION_RATE_LIMIT = 100
MESSAGE_RATE_LIMIT = 100
# A loop would keep making messages; one to postmaster may make its own, the
# pipe(8) bounce to its sender and Schleuder's discarded notice.
MAX_LOOP_MESSAGES = 3
LOOP_SETTLE_SECONDS = 60.0
TESTSSL_TIMEOUT_SECONDS = 600.0
# What testssl.sh says of the test bed's self-signed certificate.
TEST_CERTIFICATE_FINDINGS = ("NOT ok (self signed)", "neither CRL nor OCSP URI provided")


def note(bed: Testbed, attack: str, answer: object) -> None:
    bed.notes.append(f"{bed.name}: {attack}: {answer}")


def token() -> str:
    return f"atk{secrets.token_hex(5)}"


def sink_messages_with(bed: Testbed, word: str) -> list[str]:
    return [m.mail_from for m in bed.sink.messages() if word in m.data or any(word in r for r in m.rcpt_to)]


# --- Relaying tricks --------------------------------------------------------

RELAYING_TRICKS = {
    "percent-hack": "{t}%" + f"{OUTSIDE_DOMAIN}@{DOMAIN}",
    "bang-path": f"{OUTSIDE_DOMAIN}!" + "{t}" + f"@{DOMAIN}",
    "quoted-local-part": '"{t}@' + f'{OUTSIDE_DOMAIN}"@{DOMAIN}',
    "source-route": f"@{DOMAIN}:" + "{t}" + f"@{OUTSIDE_DOMAIN}",
    "trailing-dot": "{t}@" + f"{OUTSIDE_DOMAIN}.",
    "address-literal": "{t}@" + f"[{SINK_ADDRESS}]",
}


@pytest.mark.parametrize("trick", sorted(RELAYING_TRICKS))
def test_relaying_trick_is_refused_and_nothing_reaches_the_outside(bed: Testbed, trick: str) -> None:
    word = token()
    recipient = RELAYING_TRICKS[trick].format(t=word)
    body = f"Subject: {trick} {word}\r\n\r\n{word}\r\n.\r\n"
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1), (f"RCPT TO:<{recipient}>\r\n", 1), ("DATA\r\n", 1),
             (body, -1), QUIT]  # fmt: skip
    (session,) = raw_smtp(bed, steps)
    (rcpt,) = reply_to(session, "RCPT")
    note(bed, f"relaying trick {trick} <{recipient}>", rcpt)
    assert rcpt.startswith("5"), f"{trick}: RCPT TO:<{recipient}> got {rcpt}"
    time.sleep(QUIET_SECONDS)
    assert sink_messages_with(bed, word) == [], f"{trick}: the sink received the message"
    queued = re.compile(rf"\]: \w+: to=<[^>]*{word}")  # a delivery attempt, not the NOQUEUE reject
    delivered = [line for line in bed.mail_log(bed.relay).splitlines() if queued.search(line)]
    assert delivered == [], f"{trick}: the relay delivered it:\n" + "\n".join(delivered)


# --- SMTP smuggling (CVE-2023-51764) ------------------------------------------

# The end-of-data variants of SEC Consult's smtp-smuggling scanner: bare LF, bare CR, a NUL before the dot.
SMUGGLING_SEPARATORS = {
    "lf-dot-lf": "\n.\n",
    "lf-dot-crlf": "\n.\r\n",
    "crlf-dot-lf": "\r\n.\n",
    "cr-dot-cr": "\r.\r",
    "cr-dot-crlf": "\r.\r\n",
    "crlf-dot-cr": "\r\n.\r",
    "crlf-nul-dot-crlf": "\r\n\x00.\r\n",
}


@pytest.mark.parametrize("variant", sorted(SMUGGLING_SEPARATORS))
def test_smuggled_message_stays_inside_the_first_one(bed: Testbed, variant: str) -> None:
    """A false end of data followed by a second transaction: one message is queued (or none), never two."""
    word = token()
    forged = f"forged-{word}@{DOMAIN}"
    recipient = f"{TEST_ALIAS[0]}@{DOMAIN}"  # an alias to the sink: whatever is queued shows there
    first = f"Message-Id: <{new_message_id('smuggling')}>\r\nSubject: smuggling {word}\r\n\r\nfirst part {word}"
    smuggled = (
        f"MAIL FROM:<{forged}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
        f"From: <{forged}>\r\nSubject: smuggled {word}\r\n\r\nsmuggled part {word}\r\n"
    )
    payload = first + SMUGGLING_SEPARATORS[variant] + smuggled + ".\r\n"
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1), (f"RCPT TO:<{recipient}>\r\n", 1), ("DATA\r\n", 1),
             (payload, -1), QUIT]  # fmt: skip
    (session,) = raw_smtp(bed, steps)
    answers = reply_to(session, "Message-Id")
    note(bed, f"smuggling {variant}", answers)
    assert answers, f"{variant}: no reply to the data"
    # One reply: the relay did not read the smuggled commands as commands.
    assert len(answers) == 1, f"{variant}: {answers}"
    assert answers[0][:1] in ("2", "5"), f"{variant}: {answers}"
    if answers[0].startswith("250"):
        bed.sink.wait_for(f"the {variant} message", lambda m: f"first part {word}" in m.data, 90)
    time.sleep(QUIET_SECONDS)
    senders = sink_messages_with(bed, word)
    expected = [SENDER] if answers[0].startswith("250") else []
    assert senders == expected, f"{variant}: the sink received {len(senders)} messages, from {senders}"
    forged_lines = [line for line in bed.mail_log(bed.relay).splitlines() if f"from=<{forged}>" in line]
    assert forged_lines == [], f"{variant}: the relay queued the smuggled message:\n" + "\n".join(forged_lines)


# --- What the server tells and whom it listens to ------------------------------


def test_vrfy_is_refused(bed: Testbed) -> None:
    (session,) = raw_smtp(bed, [EHLO, ("VRFY postmaster\r\n", 1), (f"VRFY debian-tor@{DOMAIN}\r\n", 1), QUIT])
    answers = reply_to(session, "VRFY")
    note(bed, "VRFY postmaster, VRFY debian-tor", answers)
    assert [a[:3] for a in answers] == ["502", "502"], answers


def test_mail_without_helo_is_refused(bed: Testbed) -> None:
    (session,) = raw_smtp(bed, [(f"MAIL FROM:<{SENDER}>\r\n", 1), QUIT])
    (answer,) = reply_to(session, "MAIL")
    note(bed, "MAIL FROM without HELO", answer)
    assert answer.startswith("503"), answer


@pytest.mark.parametrize(
    ("sender", "code"),
    [(f"someone@no-such-host.{OUTSIDE_DOMAIN}", "550"), ("someone@nodots", "504"), (SENDER, "250")],
    ids=["unknown-domain", "not-fully-qualified", "real-domain"],
)
def test_sender_domain_must_exist(bed: Testbed, sender: str, code: str) -> None:
    steps = [EHLO, (f"MAIL FROM:<{sender}>\r\n", 1), (f"RCPT TO:<postmaster@{DOMAIN}>\r\n", 1), QUIT]
    (session,) = raw_smtp(bed, steps)
    (answer,) = reply_to(session, "RCPT")
    note(bed, f"MAIL FROM:<{sender}> RCPT TO:<postmaster@{DOMAIN}>", answer)
    assert answer.startswith(code), answer


SYSTEM_ALIASES = [
    f"debian-tor@{DOMAIN}", f"debian-tor+x@{DOMAIN}", f"_apt@bulbe.{DOMAIN}", f"root@{DOMAIN}",
    "systemd-network@nos-oignons.org", f"www-data@{DOMAIN}",
]  # fmt: skip
RFC2142_ADDRESSES = [f"postmaster@{DOMAIN}", f"abuse@{DOMAIN}", "hostmaster@nos-oignons.fr",
                     f"security@{DOMAIN}", f"webmaster+x@{DOMAIN}"]  # fmt: skip


def test_system_aliases_are_unknown_outside_but_rfc_2142_ones_are_public(bed: Testbed) -> None:
    addresses = SYSTEM_ALIASES + RFC2142_ADDRESSES
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1), *((f"RCPT TO:<{a}>\r\n", 1) for a in addresses), QUIT]
    (session,) = raw_smtp(bed, steps)
    answers = dict(zip(addresses, reply_to(session, "RCPT"), strict=True))
    note(bed, "RCPT of system and RFC 2142 aliases", answers)
    unknown = f"<nobody-here@{DOMAIN}>: Recipient address rejected: User unknown in local recipient table"
    for address in SYSTEM_ALIASES:
        # The very reply an address that does not exist gets: nothing is told.
        assert answers[address] == "550 5.1.1 " + unknown.replace(f"nobody-here@{DOMAIN}", address), answers
    for address in RFC2142_ADDRESSES:
        assert answers[address].startswith("250"), answers


# --- TLS ---------------------------------------------------------------------------


def s_client(bed: Testbed, port: int, *options: str) -> str:
    """The protocol and cipher of a TLS session to the relay, or "" if the handshake failed."""
    starttls = ["-starttls", "smtp"] if port == 25 else []
    result = bed.world(
        ["openssl", "s_client", "-connect", f"{RELAY_WORLD_ADDRESS}:{port}", *starttls, *options], 60, ""
    )
    return tls_session(result.stdout)


def tls_session(s_client_output: str) -> str:
    """The protocol and cipher s_client printed, or "" if the handshake failed."""
    new = re.search(r"^New, (\S+), Cipher is (\S+)", s_client_output, re.M)
    if new is None or new.group(2) == "(NONE)":
        return ""
    # "New, ..." names the cipher's own version (TLSv1.0 for a CBC cipher in a
    # TLS 1.1 session); the session block, when s_client prints it, the
    # protocol.  TLS 1.3 ciphers exist in TLS 1.3 only.
    session = re.search(r"^ +Protocol *: (\S+)", s_client_output, re.M)
    return f"{session.group(1) if session else new.group(1)} {new.group(2)}"


# The positive control: the same client, options and namespace against an
# openssl s_server that allows the old version (the refusal above is the relay's).
OLD_TLS_SERVER = """openssl s_server -quiet -naccept 1 -accept 127.0.0.1:{port} -cert {cert} -key {key} \\
    -{version} -cipher DEFAULT@SECLEVEL=0 </dev/null >/dev/null 2>&1 &
server=$!
for _ in 1 2 3 4 5 6 7 8 9 10; do
    ss -Hltn 'sport = :{port}' | grep -q . && break
    sleep 0.5
done
timeout 20 openssl s_client -connect 127.0.0.1:{port} -{version} -cipher DEFAULT@SECLEVEL=0 </dev/null 2>&1
kill $server 2>/dev/null || true
wait
"""


@pytest.mark.parametrize("version", ["tls1", "tls1_1"])
def test_the_client_would_speak_the_old_versions(bed: Testbed, version: str) -> None:
    keys = bed.artifacts.relay_key
    script = OLD_TLS_SERVER.format(port=14433, cert=keys.certificate, key=keys.key, version=version)
    session = tls_session(bed.world(["sh", "-c", script], 60).stdout)
    note(bed, f"openssl s_client -{version} against an s_server that allows it", session)
    assert session.startswith({"tls1": "TLSv1 ", "tls1_1": "TLSv1.1 "}[version]), session


@pytest.mark.parametrize("port", [25, 465])
def test_only_tls_1_2_and_later(bed: Testbed, port: int) -> None:
    # SECLEVEL=0: the client itself would refuse TLS 1.0 and 1.1; the refusal must be the server's.
    sessions = {version: s_client(bed, port, f"-{version}", "-cipher", "DEFAULT@SECLEVEL=0")
                for version in ("tls1", "tls1_1", "tls1_2")}  # fmt: skip
    sessions["tls1_3"] = s_client(bed, port, "-tls1_3")
    note(bed, f"TLS versions on port {port}", sessions)
    assert sessions["tls1"] == "", sessions
    assert sessions["tls1_1"] == "", sessions
    assert sessions["tls1_2"].startswith("TLSv1.2 "), sessions
    assert sessions["tls1_3"].startswith("TLSv1.3 "), sessions


def test_smtps_offers_only_forward_secret_aead_ciphers(bed: Testbed) -> None:
    offered = {cipher: s_client(bed, 465, "-tls1_2", "-cipher", f"{cipher}@SECLEVEL=0")
               for cipher in ("AES256-GCM-SHA384", "AES128-SHA", "ECDHE-RSA-AES128-SHA256",
                              "ECDHE-RSA-AES256-GCM-SHA384")}  # fmt: skip
    note(bed, "TLS 1.2 ciphers on port 465", offered)
    # Static RSA (no forward secrecy) and CBC are refused; ECDHE with GCM is taken.
    assert offered["AES256-GCM-SHA384"] == "", offered
    assert offered["AES128-SHA"] == "", offered
    assert offered["ECDHE-RSA-AES128-SHA256"] == "", offered
    assert offered["ECDHE-RSA-AES256-GCM-SHA384"] == "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384", offered


def test_testssl_finds_nothing_not_ok_but_the_test_certificate(bed: Testbed) -> None:
    """testssl.sh (Debian's package) on ports 25 and 465 at once: every finding rated NOT ok fails.

    But the test certificate's own: it is self-signed (the nodes pin its key)
    and names no CRL or OCSP URI; the relay's real certificate is an ACME one.
    """
    started = time.monotonic()
    # testssl.sh's scan is a flood of its own: it would be cut short with 421
    # and use up the allowance of the address later cases send from. Anvil
    # itself is tested below, from addresses of its own.
    with anvil_exemption(bed.relay, SINK_ADDRESS), ThreadPoolExecutor(max_workers=2) as pool:
        runs = {port: pool.submit(bed.world, command_of_testssl(port), TESTSSL_TIMEOUT_SECONDS) for port in (25, 465)}
        outputs = {port: run.result() for port, run in runs.items()}
    seconds = time.monotonic() - started
    for port, result in outputs.items():
        findings = [line.strip() for line in result.stdout.splitlines() if "NOT ok" in line]
        note(bed, f"testssl.sh on port {port} ({seconds:.0f} s for both ports)", findings or "no NOT ok finding")
        assert "Done" in result.stdout, f"port {port}: testssl.sh did not finish:\n{result.stdout[-3000:]}"
        unexpected = [line for line in findings if not any(known in line for known in TEST_CERTIFICATE_FINDINGS)]
        assert unexpected == [], f"port {port}:\n" + "\n".join(unexpected)


NMAP_TIMEOUT_SECONDS = 600.0


def _nmap_sections(output: str) -> dict[str, str]:
    """nmap's report per port ("25/tcp ..." up to the next port line)."""
    sections: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        found = re.match(r"^(\d+)/tcp\s", line)
        if found:
            current = found.group(1)
            sections[current] = ""
        elif current is not None and line.startswith("|"):
            sections[current] += line + "\n"
    return sections


def test_nmap_finds_no_open_relay_and_grades_tls_a(bed: Testbed) -> None:
    """nmap's NSE scripts (Debian's package), the peer of testssl.sh: smtp-open-relay, ssl-enum-ciphers."""
    arguments = f"smtp-open-relay.domain={OUTSIDE_DOMAIN},smtp-open-relay.ip={SINK_ADDRESS}"
    command = ["nmap", "-Pn", "-n", "-p", "25,465", "--script", "smtp-open-relay,ssl-enum-ciphers",
               "--script-args", arguments, RELAY_WORLD_ADDRESS]  # fmt: skip
    with anvil_exemption(bed.relay, SINK_ADDRESS):
        result = bed.world(command, NMAP_TIMEOUT_SECONDS).check("nmap")
    sections = _nmap_sections(result.stdout)
    grades = {port: re.findall(r"least strength: (\S+)", text) for port, text in sections.items()}
    relay = [line.strip("|_ ") for line in sections.get("25", "").splitlines() if "relay" in line]
    note(bed, "nmap ssl-enum-ciphers least strength", grades)
    note(bed, "nmap smtp-open-relay on port 25", relay)
    assert grades == {"25": ["A"], "465": ["A"]}, result.stdout[-4000:]
    assert any("doesn't seem to be an open relay" in line for line in relay), result.stdout[-4000:]


def command_of_testssl(port: int) -> list[str]:
    starttls = ["--starttls", "smtp"] if port == 25 else []
    return ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--connect-timeout", "10",
            "--openssl-timeout", "10", *starttls, f"{RELAY_WORLD_ADDRESS}:{port}"]  # fmt: skip


# --- Floods ------------------------------------------------------------------------


def _with_world_address(bed: Testbed, address: str) -> None:
    bed.network.address(bed.network.world, "to-bulbe", address)


def _without_world_address(bed: Testbed, address: str) -> None:
    bed.network.ip(bed.network.world, "address", "del", f"{address}/24", "dev", "to-bulbe")


def _raw_smtp_from(bed: Testbed, address: str, steps: list[tuple[str, int]], connections: int = 1) -> list[Transcript]:
    """raw_smtp from an address of the world namespace used by this case only (anvil counts per address)."""
    _with_world_address(bed, address)
    try:
        return raw_smtp(bed, steps, source=address, connections=connections)
    finally:
        _without_world_address(bed, address)


def _accepted_then_refused(bed: Testbed, attack: str, answers: list[str]) -> tuple[int, list[str]]:
    """How many replies were 250, and the others; noted in the report."""
    accepted = sum(1 for a in answers if a.startswith("250"))
    refused = [a for a in answers if not a.startswith("250")]
    note(bed, attack, f"{accepted} x 250, then {refused[:1]}")
    return accepted, refused


def test_connection_flood_is_cut_by_anvil(bed: Testbed) -> None:
    sessions = _raw_smtp_from(bed, RATE_ATTACKER_ADDRESS, [QUIT], connections=CONNECTION_RATE_LIMIT + 5)
    greetings = [session[0][1][0] if session[0][1] else "" for session in sessions]
    welcomed = sum(1 for g in greetings if g.startswith("220 "))
    refused = [g for g in greetings if g.startswith("421 ")]
    note(bed, f"{len(greetings)} connections in a row", f"{welcomed} x 220, {len(refused)} x {refused[:1]}")
    assert welcomed <= CONNECTION_RATE_LIMIT, f"{welcomed} connections welcomed"
    assert refused, greetings[-3:]
    assert "too many connections" in refused[0], refused[0]


def test_message_flood_is_cut_by_anvil(bed: Testbed) -> None:
    mail = (f"MAIL FROM:<{SENDER}>\r\n", 1)
    steps = [EHLO, *([mail, ("RSET\r\n", 1)] * (MESSAGE_RATE_LIMIT + 5)), QUIT]
    (session,) = _raw_smtp_from(bed, MESSAGE_ATTACKER_ADDRESS, steps)
    answers = reply_to(session, "MAIL")
    accepted, refused = _accepted_then_refused(bed, f"{len(answers)} MAIL FROM in one session", answers)
    assert accepted == MESSAGE_RATE_LIMIT, answers[-6:]
    assert refused, answers[-3:]
    assert refused[0].startswith("4"), refused[0]


# --- The relay as an outsider's tool (docs/open-internet.md) ---------------------

FLOOD_ADDRESSES = tuple(f"10.237.1.{n}" for n in range(20, 25))
FLOOD_CONNECTIONS_PER_ADDRESS = 20
# The promise: another client's greeting within 2 s of its connection, under
# the flood, beyond what the same greeting takes without it (the control
# absorbs the namespace's and Python's start on a loaded machine).
FLOOD_BANNER_SECONDS = 2.0
RECIPIENT_ATTACKER_ADDRESS = "10.237.1.11"
HEADER_ATTACKER_ADDRESS = "10.237.1.12"


def _data_reply(bed: Testbed, sender: str, header_from: str, recipient: str, word: str, *, source: str) -> str:
    body = (f"Message-Id: <{new_message_id('forged-from')}>\r\nFrom: <{header_from}>\r\nTo: <{recipient}>\r\n"
            f"Subject: from {header_from} {word}\r\n\r\n{word}\r\n.\r\n")  # fmt: skip
    steps = [EHLO, (f"MAIL FROM:<{sender}>\r\n", 1), (f"RCPT TO:<{recipient}>\r\n", 1), ("DATA\r\n", 1),
             (body, 1), QUIT]  # fmt: skip
    (session,) = raw_smtp(bed, steps, source=source)
    answers = reply_to(session, "Message-Id")
    return answers[0] if answers else f"no reply to the data: {session}"


# The domains themselves, and, since the test site pins its node (relay.subdomain_senders
# = "pinned-nodes" by default), the node's name too (docs/open-internet.md).
@pytest.mark.parametrize(
    "sender", [f"root@{DOMAIN}", f"root@bulbe.{DOMAIN}", "dons@nos-oignons.fr", f"root@{SMARTHOST_HOSTNAME}"]
)
def test_own_domains_are_refused_as_envelope_senders_from_outside(bed: Testbed, sender: str) -> None:
    steps = [EHLO, (f"MAIL FROM:<{sender}>\r\n", 1), (f"RCPT TO:<postmaster@{DOMAIN}>\r\n", 1), QUIT]
    (session,) = raw_smtp(bed, steps)
    (answer,) = reply_to(session, "RCPT")
    note(bed, f"MAIL FROM:<{sender}> from outside, RCPT TO:<postmaster@{DOMAIN}>", answer)
    assert answer.startswith("554 5.7.1 "), answer
    assert "own domains send only from its relay and its nodes" in answer, answer


def test_a_forged_own_from_header_from_outside_is_refused_and_an_outside_one_delivered(bed: Testbed) -> None:
    word = token()
    recipient = f"{TEST_ALIAS[0]}@{DOMAIN}"  # an alias to the sink
    _with_world_address(bed, HEADER_ATTACKER_ADDRESS)
    try:
        attacker = HEADER_ATTACKER_ADDRESS
        forged = _data_reply(bed, SENDER, f"root@{DOMAIN}", recipient, f"forged-{word}", source=attacker)
        subdomain = _data_reply(bed, SENDER, f"cron@bulbe.{DOMAIN}", recipient, f"sub-{word}", source=attacker)
        node = _data_reply(bed, SENDER, f"root@{SMARTHOST_HOSTNAME}", recipient, f"node-{word}", source=attacker)
        control = _data_reply(bed, SENDER, SENDER, recipient, f"control-{word}", source=attacker)
    finally:
        _without_world_address(bed, HEADER_ATTACKER_ADDRESS)
    note(bed, f"From: root@{DOMAIN} from outside", forged)
    note(bed, f"From: cron@bulbe.{DOMAIN} from outside", subdomain)
    note(bed, f"From: root@{SMARTHOST_HOSTNAME} (a pinned node's name) from outside", node)
    for answer in (forged, subdomain, node):
        assert answer.startswith("5"), answer
        assert "From: header names this site's domains" in answer, answer
    assert control.startswith("250"), control
    received = bed.sink.wait_for("the outside From: control", lambda m: f"control-{word}" in m.data, 90)
    # Postfix's mark, read by rspamd: one, Postfix's own, whatever the client sent.
    assert received.data.count("X-Oignons-Origin: outside") == 1, received.data[:3000]
    time.sleep(QUIET_SECONDS)
    assert sink_messages_with(bed, f"forged-{word}") == [], "the forged From: reached the sink"
    assert sink_messages_with(bed, f"sub-{word}") == [], "the forged subdomain From: reached the sink"
    assert sink_messages_with(bed, f"node-{word}") == [], "the forged node From: reached the sink"


def test_node_mail_in_the_own_domain_still_reaches_an_alias(bed: Testbed) -> None:
    """Positive control: a node (its certificate) sends as root@marcuse, through the relay."""
    sent = sendmail(bed.smarthost, f"{TEST_ALIAS[0]}@{DOMAIN}", "node-own-from")
    received = bed.sink.wait_for("the node's message", lambda m: sent.token in m.data, 120)
    assert f"@{SMARTHOST_HOSTNAME}" in header(received.data, "From"), header(received.data, "From")
    assert "X-Oignons-Origin" not in received.data, received.data[:3000]


LIST_COMMAND_ADDRESSES = {
    f"discussion-request@{DOMAIN}": "550",  # Mailman 3: "results of your email commands"
    f"discussion-join@{DOMAIN}": "550",  # a subscription confirmation to whoever is named
    f"discussion-subscribe+x@{DOMAIN}": "550",
    f"machines-sendkey@{DOMAIN}": "550",  # Schleuder: the list's key to anyone
    f"machines-request@{DOMAIN}": "250",  # Schleuder: answers a subscriber's valid signature only
    f"machines@{DOMAIN}": "250",
}


def test_list_command_addresses_take_no_mail_from_outside(bed: Testbed) -> None:
    addresses = list(LIST_COMMAND_ADDRESSES)
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1), *((f"RCPT TO:<{a}>\r\n", 1) for a in addresses), QUIT]
    (session,) = raw_smtp(bed, steps)
    answers = dict(zip(addresses, reply_to(session, "RCPT"), strict=True))
    note(bed, "RCPT of list command addresses from outside", answers)
    for address, code in LIST_COMMAND_ADDRESSES.items():
        assert answers[address].startswith(code), answers
    # Positive control: a local program may still write to them.
    script = (
        "import smtplib\n"
        "with smtplib.SMTP('127.0.0.1', 25, timeout=30) as s:\n"
        "    s.ehlo('bulbe.nos-oignons.net'); s.mail('root@bulbe.nos-oignons.net')\n"
        f"    print(s.rcpt('machines-sendkey@{DOMAIN}')); s.rset()\n"
    )
    local = bed.relay.check("python3", input_text=script)
    assert local.startswith("(250,"), local


def _is_loopback(network: str) -> bool:
    parsed = ipaddress.ip_network(network)
    if isinstance(parsed, ipaddress.IPv4Network):
        return parsed.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
    return any(parsed.subnet_of(ipaddress.IPv6Network(n)) for n in ("::ffff:127.0.0.0/104", "::1/128"))


def test_rspamd_treats_only_the_relays_mynetworks_as_local(bed: Testbed) -> None:
    dump = bed.relay.check("rspamadm configdump options", timeout=120)
    found = re.search(r"(?ms)^local_addrs\s*\[(.*?)\]", dump)
    assert found is not None, dump[-3000:]
    networks = re.findall(r'"([^"]+)"', found.group(1))
    note(bed, "rspamd's local_addrs", networks)
    # rspamd adds 127.2.4.7 of its own: loopback too.
    assert {"127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128"} <= set(networks), found.group(0)
    for network in networks:
        assert _is_loopback(network), found.group(0)
    # The test network (10.237.0.0/16, private) is the outside: its mail is checked (SPF) ...
    word = token()
    recipient = f"{TEST_ALIAS[0]}@{DOMAIN}"
    control = _data_reply(bed, SENDER, SENDER, recipient, f"checked-{word}", source=CLEAN_CLIENT_ADDRESS)
    assert control.startswith("250"), control
    received = bed.sink.wait_for("the checked message", lambda m: f"checked-{word}" in m.data, 90)
    results = header(received.data, "Authentication-Results")
    note(bed, "Authentication-Results of mail from a 10/8 client", results)
    assert "spf=" in results, received.data[:3000]
    # ... and not DKIM-signed with the site's key (the client sent no signature, so none at all; the ARC seal
    # the relay adds to what it receives for forwarding vouches only for the results it found).
    assert header(received.data, "DKIM-Signature") == "", received.data[:3000]


def test_dsn_is_not_offered(bed: Testbed) -> None:
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1),
             (f"RCPT TO:<postmaster@{DOMAIN}> NOTIFY=SUCCESS,FAILURE\r\n", 1), QUIT]  # fmt: skip
    (session,) = raw_smtp(bed, steps)
    (ehlo,) = reply_to(session, "EHLO")
    (rcpt,) = reply_to(session, "RCPT")
    note(bed, "RCPT TO NOTIFY=SUCCESS from outside", rcpt)
    assert "DSN" not in ehlo.split("\n"), ehlo
    assert ehlo.startswith("250"), ehlo
    assert not rcpt.startswith("250"), rcpt


FAN_OUT_ATTACKER_ADDRESS = "10.237.1.13"


def test_recipients_of_one_message_are_bounded(bed: Testbed) -> None:
    """One message to many extensions of one alias: the client's recipients a minute accepted, one delivery made."""
    limits = bed.artifacts.site.relay.client_limits
    bound = min(limits.recipients_per_message, limits.recipient_rate_limit)
    word = token()
    recipients = [f"{TEST_ALIAS[0]}+{word}{n}@{DOMAIN}" for n in range(bound + 5)]
    body = f"Subject: fan-out {word}\r\n\r\n{word}\r\n.\r\n"
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1), *((f"RCPT TO:<{r}>\r\n", 1) for r in recipients),
             ("DATA\r\n", 1), (body, 1), QUIT]  # fmt: skip
    (session,) = _raw_smtp_from(bed, FAN_OUT_ATTACKER_ADDRESS, steps)
    answers = reply_to(session, "RCPT")
    attack = f"one message to {len(recipients)} extensions of one alias"
    accepted, refused = _accepted_then_refused(bed, attack, answers)
    assert accepted == bound, answers[-6:]
    assert refused, answers[-3:]
    assert refused[0].startswith("45"), refused
    bed.sink.wait_for("the fan-out message", lambda m: word in m.data, 90)

    def settled() -> int | None:
        before = len(sink_messages_with(bed, word))
        time.sleep(QUIET_SECONDS)
        after = len(sink_messages_with(bed, word))
        return after if after == before else None

    copies = wait_until("the fan-out's deliveries to settle", settled, 240)
    note(bed, f"deliveries of that message at the sink ({bound} recipients accepted)", copies)
    # The extensions merged in cleanup: one delivery to the alias's destination.
    assert copies == 1, copies


def test_recipient_guessing_is_cut_by_anvil(bed: Testbed) -> None:
    limits = bed.artifacts.site.relay.client_limits
    # Below smtpd_soft_error_limit (10) per session, as a guesser that reconnects.
    per_session = 9
    sessions = limits.recipient_rate_limit // per_session + 2
    guesses = [(f"RCPT TO:<guess{n}@{DOMAIN}>\r\n", 1) for n in range(per_session)]
    steps = [EHLO, (f"MAIL FROM:<{SENDER}>\r\n", 1), *guesses, QUIT]
    transcripts = _raw_smtp_from(bed, RECIPIENT_ATTACKER_ADDRESS, steps, connections=sessions)
    session = [step for transcript in transcripts for step in transcript]
    answers = reply_to(session, "RCPT")
    unknown = sum(1 for a in answers if a.startswith("550"))
    limited = [a for a in answers if a.startswith("4")]
    note(bed, f"{len(answers)} guessed recipients in {sessions} sessions", f"{unknown} x 550, then {limited[:1]}")
    assert unknown <= limits.recipient_rate_limit, answers[-5:]
    assert limited, answers[-5:]
    assert "Too many recipients" in limited[0] or "too many" in limited[0].lower(), limited[0]


def _banner_seconds(bed: Testbed) -> tuple[float, str]:
    started = time.monotonic()
    (session,) = raw_smtp(bed, [QUIT], source=CLEAN_CLIENT_ADDRESS, timeout=60)
    greeting = session[0][1][0] if session[0][1] else ""
    return time.monotonic() - started, greeting


def test_port_25_greets_another_client_under_a_flood_of_idle_connections(bed: Testbed) -> None:
    control, control_greeting = _banner_seconds(bed)
    assert control_greeting.startswith("220 "), control_greeting
    for address in FLOOD_ADDRESSES:
        _with_world_address(bed, address)
    flood = subprocess.Popen(
        ["ip", "netns", "exec", bed.network.world, "/usr/bin/python3", str(Path(__file__).with_name("smtp_flood.py")),
         RELAY_WORLD_ADDRESS, "25", str(FLOOD_CONNECTIONS_PER_ADDRESS), *FLOOD_ADDRESSES],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=COMMAND_ENVIRONMENT,
    )  # fmt: skip
    try:
        assert flood.stdout is not None
        counts = json.loads(flood.stdout.readline() or "{}")
        flooded, greeting = _banner_seconds(bed)
    finally:
        if flood.stdin is not None:
            flood.stdin.close()
        flood.wait(30)
        for address in FLOOD_ADDRESSES:
            _without_world_address(bed, address)
    note(bed, f"{len(FLOOD_ADDRESSES)} x {FLOOD_CONNECTIONS_PER_ADDRESS} idle connections", counts)
    note(bed, "another client's greeting", f"{flooded:.2f} s under the flood, {control:.2f} s without")
    assert greeting.startswith("220 "), greeting
    limit = bed.artifacts.site.relay.client_limits.connection_count_limit
    assert counts.get("greeted", 0) <= limit * len(FLOOD_ADDRESSES), counts
    assert flooded - control < FLOOD_BANNER_SECONDS, f"{flooded:.2f} s under the flood, {control:.2f} s without"


# --- Mail loops between root and Schleuder ---------------------------------------


def test_postinst_warned_that_the_machines_list_did_not_exist(bed: Testbed) -> None:
    """The relay was installed before its list was created (tests/e2e/testbed.py)."""
    assert f"root's mail goes to the Schleuder list {LIST_ADDRESS}, which does not exist" in bed.install_logs["relay"]


def _queue(bed: Testbed) -> list[dict[str, object]]:
    return [json.loads(line) for line in bed.relay.check("postqueue -j").splitlines() if line.strip()]


def _only_outside_mail_waits(bed: Testbed, entries: list[dict[str, object]]) -> bool:
    """Nothing in the queue but mail deferred on its way to outside domains."""
    local_domains = (*bed.artifacts.site.relay.destinations, "localhost")
    for entry in entries:
        recipients = entry.get("recipients")
        if entry.get("queue_name") != "deferred" or not isinstance(recipients, list):
            return False
        for recipient in recipients:
            domain = str(recipient.get("address", "")).rpartition("@")[2].lower()
            if domain in local_domains:
                return False
    return True


def test_no_mail_loop_while_the_machines_list_is_missing(bed: Testbed) -> None:
    """postmaster -> root -> the missing list: Schleuder fails, its notice to root@localhost must not loop."""
    bed.relay.check(f"schleuder-cli lists delete {LIST_ADDRESS} --YES", timeout=120)
    assert LIST_ADDRESS not in bed.relay.run("schleuder-cli lists list", timeout=120).stdout
    since = bed.relay.check("date '+%Y-%m-%d %H:%M:%S'").strip()
    time.sleep(1)
    message_id = new_message_id("loop")
    result = bed.swaks("--from", SENDER, "--to", f"postmaster@{DOMAIN}", "--header", f"Message-Id: <{message_id}>")
    assert "250 2.0.0" in result.stdout, result.stdout[-2000:]

    def handled() -> bool | None:
        log = bed.mail_log(bed.relay)
        return (
            True
            if re.search(rf"to=<{re.escape(LIST_ADDRESS)}>.*relay=schleuder.*status=", log) and (message_id in log)
            else None
        )

    wait_until("the relay's delivery attempt to the missing list", handled, 90)
    deadline = time.monotonic() + LOOP_SETTLE_SECONDS
    while not _only_outside_mail_waits(bed, _queue(bed)) and time.monotonic() < deadline:
        time.sleep(2)
    log = bed.relay.check(f"journalctl --no-pager -q -o short-iso --facility=mail --since '{since}'", timeout=60)
    created = re.findall(r"postfix/cleanup\[\d+\]: (\w+): message-id=", log)
    discarded = [line for line in log.splitlines() if " discard: " in line and "<root@localhost>" in line]
    note(bed, "one message to postmaster without the machines list",
         f"{len(created)} messages queued, {len(discarded)} Schleuder notices discarded")  # fmt: skip
    queue = _queue(bed)
    assert _only_outside_mail_waits(bed, queue), f"mail still waiting on the relay after a minute: {queue}"
    assert 1 <= len(created) <= MAX_LOOP_MESSAGES, f"{len(created)} messages:\n{log[-4000:]}"
    # Nothing new a few seconds later: the chain has ended.
    time.sleep(QUIET_SECONDS)
    later = bed.relay.check(f"journalctl --no-pager -q -o short-iso --facility=mail --since '{since}'", timeout=60)
    assert len(re.findall(r"postfix/cleanup\[\d+\]: (\w+): message-id=", later)) == len(created), later[-3000:]
