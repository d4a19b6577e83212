"""Two hosts, real mail: a Tor node (smarthost) and the relay, booted, exchanging mail.

Every case runs twice (conftest.PAIRS): trixie relay with a bookworm node, and
the reverse.  The cases run in this file's order on one test bed per pair;
each uses its own addresses and message IDs, so that none depends on another.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.machines import (
    CLEAN_CLIENT_ADDRESS,
    LISTED_CLIENT_ADDRESS,
    RELAY_ADDRESS,
    RELAY_WORLD_ADDRESS,
    SMARTHOST_ADDRESS,
    master_pid,
    wait_until,
)
from tests.e2e.mail import (
    Sent,
    final_reply,
    header,
    message_text,
    replies,
    sendmail,
    smtp_process,
    wait_for_delivery,
)
from tests.e2e.testbed import (
    BLOCKLIST_SYMBOL,
    DOMAIN,
    GREYLIST_DELAY_SECONDS,
    LIST_ADDRESS,
    LIST_ADMIN,
    MAX_EXPOSURE,
    OUTSIDE_DOMAIN,
    RELAY_HOSTNAME,
    SCORED_SPAMMER,
    TEST_ALIAS,
    TOOL_ENVIRONMENT,
    Received,
    Testbed,
    new_message_id,
    parse_pins,
)
from tests.system.debian_system import COMMAND_ENVIRONMENT

SMARTHOST_PACKAGE = "oignons-mail-smarthost"
# How long a message that must NOT produce a reply is given to produce one.
QUIET_SECONDS = 5.0


def swaks_message(label: str, sender: str, recipient: str, *extra: str) -> tuple[list[str], str]:
    """swaks arguments for one test message, and its Message-Id."""
    message_id = new_message_id(label)
    arguments = [
        "--from", sender, "--to", recipient,
        "--header", f"Message-Id: <{message_id}>", "--header", f"Subject: e2e {label}",
        "--body", f"oignons-mail end-to-end test {label}\nToken: {message_id.split('@')[0]}\n",
        *extra,
    ]  # fmt: skip
    return arguments, message_id


def reconfigure_pins(bed: Testbed, pins: str) -> None:
    """Preseed the node's relay-pins question and reconfigure its package, as README.md says."""
    bed.smarthost.check(
        f"echo '{SMARTHOST_PACKAGE} {SMARTHOST_PACKAGE}/relay-pins string {pins}' | debconf-set-selections"
        f" && dpkg-reconfigure -f noninteractive {SMARTHOST_PACKAGE}",
        timeout=180,
    )


def deferred_reasons(bed: Testbed, queue_id: str) -> list[str]:
    """The delay reasons of a message in the smarthost's deferred queue (postqueue -j)."""
    output = bed.smarthost.check("postqueue -j")
    reasons = []
    for line in output.splitlines():
        entry = json.loads(line)
        if entry.get("queue_id") == queue_id and entry.get("queue_name") == "deferred":
            reasons += [str(r.get("delay_reason", "")) for r in entry.get("recipients", [])]
    return reasons


def wait_deferred(bed: Testbed, sent: Sent, reason: str) -> str:
    """Wait until the root message sits in the smarthost's deferred queue for `reason`; its queue ID."""
    line = wait_for_delivery(bed, bed.smarthost, sent.message_id, r"to=<machines@nos-oignons\.net>.*status=deferred")
    queue_id = line.split("]: ")[1].split(":")[0]
    assert reason in line, f"deferred for another reason than {reason!r}:\n{line}"
    reasons = wait_until(
        f"{queue_id} in the smarthost's deferred queue", lambda: deferred_reasons(bed, queue_id) or None, 30
    )
    assert any(reason in r for r in reasons), f"{queue_id} deferred with {reasons}, expected {reason!r}"
    return queue_id


def wait_relay_accepts(bed: Testbed, sent: Sent) -> str:
    """Wait until the smarthost delivered the root message to the relay; the line."""
    return wait_for_delivery(
        bed,
        bed.smarthost,
        sent.message_id,
        r"to=<machines@nos-oignons\.net>, orig_to=<root>, relay=bulbe\.nos-oignons\.net\[10\.237\.0\.1\]:25,.*"
        r"status=sent \(250 ",
    )


# --- Pins -------------------------------------------------------------------


def test_live_relay_presents_the_pinned_key(bed: Testbed) -> None:
    """`oignons-mail pin --connect` on the live relay gives the pins the packages were built with."""
    for port in (25, 465):
        result = bed.network.execute(
            bed.network.world,
            ["env", *(f"{k}={v}" for k, v in TOOL_ENVIRONMENT.items()), "/usr/bin/python3", "-m", "oignons_mail",
             "pin", "--connect", f"{RELAY_WORLD_ADDRESS}:{port}"],
        )  # fmt: skip
        live = parse_pins(result.check(f"oignons-mail pin --connect {RELAY_WORLD_ADDRESS}:{port}").stdout)
        assert live == bed.artifacts.relay_key.pins, f"port {port}: the relay presents {live}"
    built = bed.smarthost.check("postconf -h smtp_tls_fingerprint_cert_match").strip()
    assert built == bed.artifacts.relay_key.pins["sha1"], f"the node pins {built!r}"


# --- Smarthost to relay -----------------------------------------------------


def test_root_mail_leaves_over_verified_tls_and_reaches_the_schleuder_list(bed: Testbed) -> None:
    sent = sendmail(bed.smarthost, "root", "root-to-list")
    line = wait_relay_accepts(bed, sent)
    process = smtp_process(line)
    log = bed.mail_log(bed.smarthost)
    verified = [
        entry
        for entry in log.splitlines()
        if f" {process}: Verified TLS connection established to {RELAY_HOSTNAME}[{RELAY_ADDRESS}]:25" in entry
    ]
    assert verified, f"no 'Verified TLS connection' line of {process} on the smarthost:\n{line}"

    if bed.schleuder_error:
        pytest.fail(f"no Schleuder list to deliver to: {bed.schleuder_error}")
    wait_for_delivery(
        bed, bed.relay, sent.message_id, r"to=<machines@nos-oignons\.net>, relay=schleuder, .*status=sent"
    )
    # Schleuder re-encrypts the message to the list's subscribers: its admin, at the sink.
    reply = bed.sink.wait_for(
        f"Schleuder's copy for {LIST_ADMIN}",
        lambda m: (
            LIST_ADMIN in m.rcpt_to and "-----BEGIN PGP MESSAGE-----" in m.data and sent.token in _decrypt(bed, m.data)
        ),
        120,
    )
    assert reply.mail_from.startswith("machines-bounce@"), reply.mail_from


def _decrypt(bed: Testbed, data: str) -> str:
    armored = re.search(r"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", data, re.S)
    if armored is None:
        return ""
    result = bed.relay.run("GNUPGHOME=/root/e2e-gnupg gpg --batch --quiet --decrypt", input_text=armored.group(0))
    return result.stdout


def test_wrong_pin_keeps_the_mail_queued_until_the_pin_is_corrected(bed: Testbed) -> None:
    wrong = bed.artifacts.stranger_key.pins["sha1"]
    right = bed.artifacts.relay_key.pins["sha1"]
    reconfigure_pins(bed, wrong)
    try:
        assert bed.smarthost.check("postconf -h smtp_tls_fingerprint_cert_match").strip() == wrong
        sent = sendmail(bed.smarthost, "root", "wrong-pin")
        queue_id = wait_deferred(bed, sent, "Server certificate not verified")
        relay_log = bed.mail_log(bed.relay)
        assert sent.message_id not in relay_log, "the relay got a message the node should not have sent"
    finally:
        reconfigure_pins(bed, right)
    assert bed.smarthost.check("postconf -h smtp_tls_fingerprint_cert_match").strip() == right
    assert deferred_reasons(bed, queue_id), f"{queue_id} left the queue before the flush"
    bed.smarthost.check("postqueue -f")
    wait_relay_accepts(bed, sent)
    wait_for_delivery(bed, bed.relay, sent.message_id, r"to=<machines@nos-oignons\.net>, relay=schleuder")


def test_mail_waits_in_the_queue_while_the_relay_is_down(bed: Testbed) -> None:
    unit = bed.relay_unit
    bed.relay.check(f"systemctl stop {unit}")
    try:
        sent = sendmail(bed.smarthost, "root", "relay-down")
        wait_deferred(bed, sent, "Connection refused")
    finally:
        bed.relay.check(f"systemctl start {unit}")
    wait_until(
        "the relay's Postfix listening again",
        lambda: True if ":25 " in bed.relay.run("ss -Hltn 'sport = :25'").stdout else None,
        60,
    )
    bed.smarthost.check("postqueue -f")
    wait_relay_accepts(bed, sent)


# --- The relay's recipients ---------------------------------------------------


def test_address_extension_is_delivered_per_the_alias_of_the_user(bed: Testbed) -> None:
    user, target = TEST_ALIAS
    arguments, message_id = swaks_message("extension", f"sender@{OUTSIDE_DOMAIN}", f"{user}+newsletter@{DOMAIN}")
    result = bed.swaks(*arguments)
    assert final_reply(result.stdout, "250 2.0.0"), f"not accepted:\n{result.stdout[-2000:]}"
    received = bed.sink.wait_for(f"{user}+newsletter's message at {target}", lambda m: message_id in m.data, 60)
    assert received.rcpt_to == [target], received.rcpt_to
    # A packaged alias too: webmaster -> root -> the machines list.
    arguments, message_id = swaks_message("extension-packaged", f"sender@{OUTSIDE_DOMAIN}", f"webmaster+logs@{DOMAIN}")
    assert final_reply(bed.swaks(*arguments).stdout, "250 2.0.0"), "webmaster+logs not accepted"
    # cleanup drops the extension (one delivery per address): local(8) gets webmaster@, its alias chain the list.
    expanded = rf"to=<webmaster@{re.escape(DOMAIN)}>, orig_to=<webmaster\+logs@{re.escape(DOMAIN)}>, relay=local, "
    wait_for_delivery(bed, bed.relay, message_id, expanded + ".*forwarded as")
    wait_for_delivery(bed, bed.relay, message_id, rf"to=<{re.escape(LIST_ADDRESS)}>, orig_to=<[^>]*>, relay=schleuder")


# With an extension too: the extension map (cleanup's) must not make smtpd take an unknown user for known.
@pytest.mark.parametrize("address", ["nobody-here", "nobody-here+x"])
def test_unknown_address_is_rejected_at_rcpt(bed: Testbed, address: str) -> None:
    result = bed.swaks("--from", f"sender@{OUTSIDE_DOMAIN}", "--to", f"{address}@{DOMAIN}", "--quit-after", "RCPT")
    reply = final_reply(result.stdout, "5")
    assert reply is not None, f"expected 550 at RCPT, got {replies(result.stdout)}"
    assert reply.startswith("550"), f"expected 550 at RCPT, got {reply}"


def test_no_open_relay_for_an_outside_host(bed: Testbed) -> None:
    for extra in ([], ["--tls"]):
        result = bed.swaks("--from", f"sender@{OUTSIDE_DOMAIN}", "--to", f"someone@{OUTSIDE_DOMAIN}",
                           "--quit-after", "RCPT", *extra)  # fmt: skip
        reply = final_reply(result.stdout, "5")
        assert reply is not None, f"relaying {extra} was not refused with a 5xx: {replies(result.stdout)}"
        assert "Relay access denied" in reply, reply


# --- Nodes relaying through the relay ------------------------------------------


def test_node_sends_outside_thanks_to_its_client_certificate(bed: Testbed) -> None:
    recipient = f"admin-mailbox@{OUTSIDE_DOMAIN}"
    sent = sendmail(bed.smarthost, recipient, "node-outside")
    wait_for_delivery(bed, bed.smarthost, sent.message_id, r"relay=bulbe\.nos-oignons\.net\[.*status=sent")
    received = bed.sink.wait_for(f"the node's message to {recipient}", lambda m: sent.token in m.data, 60)
    assert received.rcpt_to == [recipient]


def test_client_without_the_node_certificate_cannot_relay(bed: Testbed) -> None:
    keys = bed.artifacts.stranger_key
    for extra in (["--tls"], ["--tls", "--tls-cert", str(keys.certificate), "--tls-key", str(keys.key)]):
        result = bed.swaks("--from", f"sender@{OUTSIDE_DOMAIN}", "--to", f"someone@{OUTSIDE_DOMAIN}",
                           "--quit-after", "RCPT", *extra)  # fmt: skip
        assert "TLS started" in result.stdout, f"no TLS session {extra}:\n{result.stdout[-2000:]}"
        reply = final_reply(result.stdout, "554")
        assert reply is not None, f"{extra}: relaying not refused with 554: {replies(result.stdout)}"
        assert "Relay access denied" in reply, f"{extra}: {reply}"


@pytest.mark.parametrize(("port", "mode"), [(465, "--tlsc"), (25, "--tls")], ids=["smtps-465", "starttls-25"])
def test_node_certificate_relays_over_smtps_and_starttls(bed: Testbed, port: int, mode: str) -> None:
    keys = bed.artifacts.node_key
    recipient = f"tls-{port}@{OUTSIDE_DOMAIN}"
    arguments, message_id = swaks_message(f"tls-{port}", f"root@marcuse.{DOMAIN}", recipient, mode,
                                          "--tls-cert", str(keys.certificate), "--tls-key", str(keys.key))  # fmt: skip
    result = bed.swaks(*arguments, port=port)
    assert "TLS started" in result.stdout, result.stdout[-2000:]
    assert final_reply(result.stdout, "250 2.0.0"), f"port {port} did not accept: {replies(result.stdout)}"
    bed.sink.wait_for(f"the message relayed over port {port}", lambda m: message_id in m.data, 60)


def test_orange_fr_goes_through_the_slow_transport(bed: Testbed) -> None:
    sent = sendmail(bed.relay, "someone@orange.fr", "orange")
    line = wait_for_delivery(bed, bed.relay, sent.message_id, r"to=<someone@orange\.fr>.*status=sent")
    # master.cf's slow service logs as postfix/slow (its syslog_name): an
    # ordinary smtp delivery would be logged by postfix/smtp.
    assert smtp_process(line).startswith("postfix/slow/smtp["), (
        f"the orange.fr message was not delivered by the slow transport:\n{line}"
    )
    assert "relay=mx.elsewhere.test[" in line, f"not delivered to orange.fr's MX:\n{line}"
    bed.sink.wait_for("the orange.fr message", lambda m: sent.token in m.data, 30)


def test_messages_pass_through_rspamd_on_its_unix_socket(bed: Testbed) -> None:
    arguments, message_id = swaks_message("rspamd", f"sender@{OUTSIDE_DOMAIN}", f"{TEST_ALIAS[0]}@{DOMAIN}")
    assert final_reply(bed.swaks(*arguments).stdout, "250 2.0.0"), "not accepted"
    log = bed.mail_log(bed.relay)
    queue_id = next(iter(re.findall(rf"\]: (\w+): message-id=<{re.escape(message_id)}>", log)), None)
    assert queue_id, f"<{message_id}> not in the relay's log"

    def scanned() -> str | None:
        result = bed.relay.run(f"grep -F 'qid: <{queue_id}>' /var/log/rspamd/rspamd.log")
        return result.stdout or None

    line = wait_until(f"rspamd's log line for {queue_id}", scanned, 30)
    assert "rspamd_task_write_log" in line, line
    milter_warnings = [entry for entry in bed.mail_log(bed.relay).splitlines() if "milter" in entry.lower()]
    assert milter_warnings == [], "Postfix complained about the milter:\n" + "\n".join(milter_warnings[-5:])
    socket = bed.artifacts.site.relay.rspamd_milter_socket
    owner = bed.relay.check(f"stat -c '%U:%G %a' {socket}").strip()
    assert owner == "_rspamd:postfix 660", f"{socket}: {owner}"


# --- The donation responder ---------------------------------------------------


def _replies_to(bed: Testbed, sender: str) -> list[Received]:
    return bed.sink.messages_to(sender)


def _send_to_responder(bed: Testbed, label: str, sender: str, *extra: str) -> str:
    """Send to dons@ from the outside; the relay's delivery line (it carries the responder's verdict)."""
    arguments, message_id = swaks_message(label, sender, f"dons@{DOMAIN}", *extra)
    result = bed.swaks(*arguments)
    assert final_reply(result.stdout, "250 2.0.0"), f"dons@ did not accept {label}: {replies(result.stdout)}"
    return wait_for_delivery(bed, bed.relay, message_id, r"to=<dons@nos-oignons\.net>, relay=responder, .*status=sent")


def _relay_queue_empty(bed: Testbed) -> bool | None:
    return True if "Mail queue is empty" in bed.relay.check("postqueue -p") else None


def _responder_log(bed: Testbed, delivery_line: str) -> str:
    """The responder's own syslog line for the delivery (it starts with the message's queue ID)."""
    queue_id = delivery_line.split("]: ")[1].split(":", maxsplit=1)[0]
    lines = [line for line in bed.mail_log(bed.relay).splitlines() if "oignons-mail-responder[" in line]
    found = [line for line in lines if f"]: {queue_id}: " in line]
    assert len(found) == 1, f"expected one responder line for {queue_id}, found {found}"
    return found[0]


def test_donation_responder_replies_once_with_the_iban(bed: Testbed) -> None:
    iban = bed.artifacts.site.relay.responder.iban
    sender = f"donor@{OUTSIDE_DOMAIN}"
    _send_to_responder(bed, "dons-1", sender)
    reply = bed.sink.wait_for(f"the responder's reply to {sender}", lambda m: sender in m.rcpt_to, 60)
    assert reply.mail_from == "", f"the reply's envelope sender is {reply.mail_from!r}, not <>"
    assert iban in message_text(reply.data), f"no IBAN {iban} in the reply:\n{reply.data}"
    assert header(reply.data, "Auto-Submitted").startswith("auto-replied")
    second = _responder_log(bed, _send_to_responder(bed, "dons-2", sender))
    window = bed.artifacts.site.relay.responder.rate_limit_seconds
    expected = f"no reply to {sender}: already replied to {sender} within {window}s (per-sender rate limit)"
    assert second.endswith(expected), f"the responder held back its second reply for another reason:\n{second}"
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 60)
    time.sleep(QUIET_SECONDS)
    assert len(_replies_to(bed, sender)) == 1, "a second reply within the rate window"


@pytest.mark.parametrize(
    ("label", "extra"),
    [
        ("null-sender", ()),
        ("auto-replied", ("--header", "Auto-Submitted: auto-replied")),
        ("bulk", ("--header", "Precedence: bulk")),
    ],
    ids=["null-sender", "auto-replied", "bulk"],
)
def test_donation_responder_ignores_automatic_mail(bed: Testbed, label: str, extra: tuple[str, ...]) -> None:
    sender = "" if label == "null-sender" else f"{label}-sender@{OUTSIDE_DOMAIN}"
    line = _send_to_responder(bed, f"dons-{label}", sender or "<>", *extra)
    assert f"no reply to {sender or '<>'}" in line, f"the responder did not decline {label} mail:\n{line}"
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 60)
    time.sleep(QUIET_SECONDS)
    if sender:
        assert _replies_to(bed, sender) == [], f"the responder replied to {label} mail"


# rspamd's test pattern for the action "add header" (enabled in the test bed only).
GTUBE_ADD_HEADER = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.mark.parametrize(
    ("sender", "body", "verdict"),
    [
        # By its score: milter_headers writes X-Spam-Status and the queue ID.
        pytest.param(SCORED_SPAMMER, "Comment faire un don ?\n", "X-Spam-Status: Yes, score=", id="scored"),
        # By a pre-result, which ends the scan before milter_headers: only the proxy's X-Spam.
        pytest.param(f"gtube@{OUTSIDE_DOMAIN}", f"Comment faire un don ?\n{GTUBE_ADD_HEADER}\n", "X-Spam: Yes",
                     id="pre-result"),
    ],
)  # fmt: skip
def test_donation_responder_does_not_answer_what_rspamd_calls_spam(
    bed: Testbed, sender: str, body: str, verdict: str
) -> None:
    # What rspamd says of the message, seen on a copy to the test alias (delivered to the sink).
    arguments, message_id = swaks_message("spam", sender, f"{TEST_ALIAS[0]}@{DOMAIN}", "--body", body)
    assert final_reply(bed.swaks(*arguments).stdout, "250 2.0.0"), "not accepted"
    copy = bed.sink.wait_for("the copy to the test alias", lambda m: message_id in m.data, 60)
    name, value = verdict.split(": ")
    assert header(copy.data, name).startswith(value), f"rspamd did not call it spam:\n{copy.data}"
    # Its own log line: pipe(8) cuts the responder's words in the delivery line short.
    line = _responder_log(bed, _send_to_responder(bed, "dons-spam", sender, "--body", body))
    assert f"no reply to {sender}: rspamd says spam ({verdict}" in line, f"the responder did not decline:\n{line}"
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 60)
    time.sleep(QUIET_SECONDS)
    assert _replies_to(bed, sender) == [], "the responder replied to spam"


def test_rspamd_writes_its_verdict_and_drops_the_senders_copy(bed: Testbed) -> None:
    """The headers the responder trusts are rspamd's: a copy in the incoming message is removed."""
    forged = ("--header", "X-Spam-Status: No, forged", "--header", "X-Rspamd-Queue-Id: FORGED",
              "--header", "Authentication-Results: forged.example; spf=pass")  # fmt: skip
    arguments, message_id = swaks_message("verdict", f"verdict@{OUTSIDE_DOMAIN}", f"{TEST_ALIAS[0]}@{DOMAIN}", *forged)
    assert final_reply(bed.swaks(*arguments).stdout, "250 2.0.0"), "not accepted"
    received = bed.sink.wait_for("the message with forged verdict headers", lambda m: message_id in m.data, 60)
    queue_id = re.findall(rf"\]: (\w+): message-id=<{re.escape(message_id)}>", bed.mail_log(bed.relay))[0]
    names = [line.split(":", 1)[0].lower() for line in received.data.split("\n\n", 1)[0].splitlines()]
    assert names.count("x-spam-status") == 1, received.data
    assert header(received.data, "X-Spam-Status").startswith("No, score="), received.data
    assert names.count("x-rspamd-queue-id") == 1, received.data
    assert header(received.data, "X-Rspamd-Queue-Id") == queue_id, received.data
    assert "forged.example" not in received.data


def _forge_burst(bed: Testbed, senders: list[str], label: str) -> None:
    """One SMTP session from the outside, one message to dons@ per forged sender (a burst, not a trickle)."""
    script = f"""
import smtplib, sys
from email.utils import formatdate
smtp = smtplib.SMTP({RELAY_WORLD_ADDRESS!r}, 25, local_hostname="client.{OUTSIDE_DOMAIN}", timeout=60)
for number, sender in enumerate(sys.stdin.read().split()):
    headers = [f"From: <{{sender}}>", "To: <dons@{DOMAIN}>", "Subject: {label} %d" % number,
               "Date: " + formatdate(), "Message-Id: <{label}-%d@e2e.{OUTSIDE_DOMAIN}>" % number]
    smtp.sendmail(sender, ["dons@{DOMAIN}"], "\\r\\n".join(headers) + "\\r\\n\\r\\nComment faire un don ?\\r\\n")
smtp.quit()
"""
    result = bed.world(["/usr/bin/python3", "-c", script], timeout=180, input_text="\n".join(senders))
    assert result.returncode == 0, f"the burst failed:\n{result.stdout}\n{result.stderr}"


def _responder_verdicts(bed: Testbed, senders: list[str]) -> dict[str, str]:
    """Each sender's verdict in the responder's syslog lines, once every one has one."""
    pattern = re.compile(r"oignons-mail-responder\[\d+\]: \w+: (no reply|replied) to (\S+?):? (.*)$")

    def verdicts() -> dict[str, str] | None:
        found = {}
        for line in bed.mail_log(bed.relay).splitlines():
            match = pattern.search(line)
            if match and match[2] in senders:
                found[match[2]] = "replied" if match[1] == "replied" else match[3]
        return found if len(found) == len(senders) else None

    return wait_until(f"the responder's verdict on {len(senders)} messages", verdicts, 240)


@pytest.fixture
def fresh_global_limit(bed: Testbed) -> Iterator[int]:
    """The responder's global count emptied, before (earlier cases replied) and after (later ones may need it)."""
    state = "/var/lib/oignons-mail-relay/responder/global"
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 60)
    bed.relay.check(f"rm -f {state}")
    yield bed.artifacts.site.relay.responder.global_rate_limit
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 120)
    bed.relay.check(f"rm -f {state}")


def test_address_extensions_get_one_reply(bed: Testbed, fresh_global_limit: int) -> None:
    senders = [f"target+{number}@{OUTSIDE_DOMAIN}" for number in range(1, 21)]
    _forge_burst(bed, senders, "extensions")
    verdicts = _responder_verdicts(bed, senders)
    replied = [sender for sender, verdict in verdicts.items() if verdict == "replied"]
    assert len(replied) == 1, f"replies to {replied}"
    window = bed.artifacts.site.relay.responder.rate_limit_seconds
    held = f"already replied to target@{OUTSIDE_DOMAIN} within {window}s (per-sender rate limit)"
    assert sorted(v for s, v in verdicts.items() if s not in replied) == [held] * 19, verdicts
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 60)
    time.sleep(QUIET_SECONDS)
    received = [r for m in bed.sink.messages() for r in m.rcpt_to if r in senders]
    assert received == replied, "the sink did not get exactly the one reply"


def test_a_burst_of_forged_senders_gets_at_most_the_global_limit(bed: Testbed, fresh_global_limit: int) -> None:
    senders = [f"forged{number}-{secrets.token_hex(3)}@{OUTSIDE_DOMAIN}" for number in range(50)]
    started = time.monotonic()
    _forge_burst(bed, senders, "burst")
    verdicts = _responder_verdicts(bed, senders)
    elapsed = time.monotonic() - started
    replied = [sender for sender, verdict in verdicts.items() if verdict == "replied"]
    window = bed.artifacts.site.relay.responder.global_rate_window_seconds
    held = f"{fresh_global_limit} replies already sent within {window}s (global rate limit)"
    assert len(replied) == fresh_global_limit, f"{len(replied)} replies to 50 forged senders"
    assert sorted(v for s, v in verdicts.items() if s not in replied) == [held] * (50 - fresh_global_limit)
    wait_until("the relay's queue to empty", lambda: _relay_queue_empty(bed), 120)
    time.sleep(QUIET_SECONDS)
    received = sorted(r for m in bed.sink.messages() for r in m.rcpt_to if r in senders)
    assert received == sorted(replied), "the sink's replies differ from the responder's log"
    bed.notes.append(f"responder burst: 50 forged senders -> {len(replied)} replies, verdicts in {elapsed:.0f}s")


# --- Greylisting --------------------------------------------------------------


def test_only_blocklisted_clients_are_greylisted(bed: Testbed) -> None:
    recipient = f"{TEST_ALIAS[0]}@{DOMAIN}"
    listed = swaks_message("greylisted", f"listed@{OUTSIDE_DOMAIN}", recipient, "--helo", f"listed.{OUTSIDE_DOMAIN}")
    first = bed.swaks(*listed[0], source=LISTED_CLIENT_ADDRESS)
    reply = final_reply(first.stdout, "4")
    why = bed.relay.run(f"grep -F {LISTED_CLIENT_ADDRESS} /var/log/rspamd/rspamd.log | tail -n 3").stdout
    assert reply is not None, f"the blocklisted client was not greylisted: {replies(first.stdout)}\n{why}"
    assert reply.startswith("451 4.7.1"), f"the blocklisted client got {reply}, not 451 4.7.1\n{why}"
    clean = swaks_message("not-greylisted", f"clean@{OUTSIDE_DOMAIN}", recipient, "--helo", f"clean.{OUTSIDE_DOMAIN}")
    at_once = bed.swaks(*clean[0], source=CLEAN_CLIENT_ADDRESS)
    assert final_reply(at_once.stdout, "250 2.0.0"), f"the clean client was not accepted: {replies(at_once.stdout)}"
    time.sleep(GREYLIST_DELAY_SECONDS + 1)
    retry = bed.swaks(*listed[0], source=LISTED_CLIENT_ADDRESS)
    assert final_reply(retry.stdout, "250 2.0.0"), f"the retry after the delay was refused: {replies(retry.stdout)}"
    log = bed.relay.check(f"grep -F {BLOCKLIST_SYMBOL} /var/log/rspamd/rspamd.log")
    assert f"{LISTED_CLIENT_ADDRESS}:from" in log, "rspamd's log shows no blocklist hit for the listed client"


# --- The smarthost is closed ----------------------------------------------------


def connect_from_the_relay(bed: Testbed, address: str, port: int) -> str:
    """'open' or 'closed': a TCP connection from the relay's network namespace."""
    probe = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(5)\n"
        f"print('open' if s.connect_ex(('{address}', {port})) == 0 else 'closed')\n"
    )
    result = bed.network.execute(bed.network.relay, ["/usr/bin/python3", "-c", probe], timeout=30)
    return result.check(f"connect to {address}:{port}").stdout.strip()


def test_smarthost_accepts_no_connection_from_outside_its_loopback(bed: Testbed) -> None:
    assert connect_from_the_relay(bed, SMARTHOST_ADDRESS, 25) == "closed", "port 25 of the node is reachable"
    # The positive control: the same probe reaches a port that is open on the
    # node's address (a listener in the node's network namespace), so
    # "closed" above is not a route or probe failure.
    listener_port = 2525
    listener = subprocess.Popen(
        ["ip", "netns", "exec", bed.network.smarthost, "/usr/bin/python3", "-c",
         "import socket, sys\n"
         f"s = socket.create_server(('{SMARTHOST_ADDRESS}', {listener_port})); s.settimeout(30)\n"
         "print('listening', flush=True)\n"
         "s.accept()\n"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=COMMAND_ENVIRONMENT,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening", "the control listener did not start"
        assert connect_from_the_relay(bed, SMARTHOST_ADDRESS, listener_port) == "open", (
            "the probe cannot reach even an open port of the node: its 'closed' proves nothing"
        )
    finally:
        listener.kill()
        listener.wait(10)
    listening = bed.smarthost.check("ss -Hltn 'sport = :25'")
    addresses = sorted(line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines())
    assert addresses, "Postfix listens on no port 25 at all"
    assert set(addresses) <= {"127.0.0.1", "[::1]"}, f"Postfix listens on {addresses}"


# --- The relay's confinement ------------------------------------------------------


def test_relay_postfix_runs_with_the_confinement_drop_in(bed: Testbed) -> None:
    unit = bed.relay_unit
    assert bed.relay.check(f"systemctl is-active {unit}").strip() == "active"
    drop_ins = bed.relay.check(f"systemctl show -p DropInPaths --value {unit}")
    assert "oignons-mail-relay.conf" in drop_ins, f"{unit} runs without the drop-in: {drop_ins!r}"
    # master(8) itself: in the unit's cgroup, with no_new_privs and without
    # the capabilities the drop-in leaves out.
    pid = master_pid(bed.relay)
    cgroup = bed.relay.check(f"cat /proc/{pid}/cgroup")
    assert unit in cgroup, f"master(8) (pid {pid}) is not in {unit}:\n{cgroup}"
    status = dict(
        line.split(":\t", 1) for line in bed.relay.check(f"cat /proc/{pid}/status").splitlines() if ":\t" in line
    )
    assert status["NoNewPrivs"].strip() == "1", "master(8) runs without no_new_privs"
    bounding = int(status["CapBnd"], 16)
    for name, number in (("CAP_SYS_ADMIN", 21), ("CAP_SYS_CHROOT", 18), ("CAP_SYS_PTRACE", 19)):
        assert not bounding & (1 << number), f"master(8) may still use {name} (CapBnd {status['CapBnd'].strip()})"


def test_no_master_cf_service_is_chrooted(bed: Testbed) -> None:
    fields = bed.relay.check("postconf -F '*/*/chroot'").splitlines()
    assert len(fields) > 10
    assert [f for f in fields if not f.endswith(" = n")] == []


def test_relay_unit_exposure_is_at_most_3(bed: Testbed) -> None:
    unit = bed.relay_unit
    after = bed.relay_exposure()
    before = bed.stock_relay_exposure()
    note = f"{bed.name}: {unit} exposure {before} stock, {after} with the drop-in"
    bed.notes.append(note)
    print(note)
    assert after <= MAX_EXPOSURE, f"{note}: above {MAX_EXPOSURE}"
    assert before > after, f"{note}: the drop-in does not lower the stock unit's exposure"
