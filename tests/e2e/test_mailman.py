"""Mailman 3 on the booted relay: a list created after the relay package gets its mail.

The relay's base system has mailman3 (installed before our package, with no
list yet); the relay package was installed afterwards.  Here Mailman runs
(mailman3.service), a list is created with `mailman create` and nothing else,
and a message sent over SMTP from the outside reaches Mailman: Postfix hands
it to Mailman's LMTP server and Mailman holds it (the sender is no member).
"""

from __future__ import annotations

import re
import secrets
import time

from oignons_mail import render
from tests.e2e.machines import CLEAN_CLIENT_ADDRESS, wait_until
from tests.e2e.mail import final_reply, replies, wait_for_delivery
from tests.e2e.testbed import DOMAIN, OUTSIDE_DOMAIN, Testbed, new_message_id

MAILMAN_TABLE = "hash:/var/lib/mailman3/data/postfix_lmtp"
MAILMAN_LMTP_PORT = 8024  # Debian's /etc/mailman3/mailman.cfg, [mta] lmtp_port
LIST_ADDRESS = f"e2e-mailman@{DOMAIN}"
STARTUP_TIMEOUT = 180.0


def wait_for_mailman(bed: Testbed) -> None:
    relay = bed.relay

    def lmtp_listening() -> bool | None:
        if relay.run("systemctl is-failed --quiet mailman3.service").returncode == 0:
            raise AssertionError(
                "mailman3.service failed on the relay:\n"
                + relay.run("systemctl status --no-pager mailman3.service; tail -n 50 /var/log/mailman3/*.log").stdout
            )
        listening = relay.run(f"ss -Hltn 'sport = :{MAILMAN_LMTP_PORT}'").stdout
        return True if listening.strip() else None

    wait_until(f"Mailman's LMTP server on port {MAILMAN_LMTP_PORT} of the relay", lmtp_listening, STARTUP_TIMEOUT)


def test_postfix_knows_mailmans_table_before_any_list(bed: Testbed) -> None:
    # mailman3 was installed before the relay package, and has no list yet.
    lists = bed.relay.check("runuser -u list -- mailman lists", timeout=120)
    assert LIST_ADDRESS not in lists
    for key in ("transport_maps", "local_recipient_maps"):
        value = bed.relay.check(f"postconf -h {key}").strip()
        assert value.endswith(f", {MAILMAN_TABLE}"), f"{key} = {value}"
    assert bed.relay.run("postfix check").returncode == 0


def test_a_list_created_afterwards_receives_mail_over_smtp(bed: Testbed) -> None:
    wait_for_mailman(bed)
    created = bed.relay.check(f"runuser -u list -- mailman create {LIST_ADDRESS}", timeout=120)
    assert LIST_ADDRESS in created, created
    message_id = new_message_id("mailman")
    sent = bed.swaks(
        "--from", f"stranger@{OUTSIDE_DOMAIN}", "--to", LIST_ADDRESS,
        "--header", f"Message-Id: <{message_id}>", "--header", "Subject: e2e mailman",
        "--body", "oignons-mail end-to-end test: a message for a Mailman list\n",
        source=CLEAN_CLIENT_ADDRESS,
    )  # fmt: skip
    assert final_reply(sent.stdout, "250 2.0.0"), f"the relay refused the list's mail: {replies(sent.stdout)}"
    # Postfix gives it to Mailman over LMTP ...
    line = wait_for_delivery(bed, bed.relay, message_id, rf"to=<{re.escape(LIST_ADDRESS)}>.*status=sent")
    assert f"relay=127.0.0.1[127.0.0.1]:{MAILMAN_LMTP_PORT}" in line, line

    # ... and Mailman has it: its log names the message (held: the sender is no member).
    def in_mailman_log() -> str | None:
        found = bed.relay.run(f"grep -rhF '{message_id}' /var/log/mailman3/").stdout
        return found or None

    logged = wait_until(f"<{message_id}> in Mailman's log", in_mailman_log, 60)
    assert LIST_ADDRESS in logged or "e2e-mailman" in logged, logged
    print(f"{bed.name}: Postfix: {line}\nMailman: {logged}")


NEW_LIST_ADDRESS = f"e2e-first-second@{DOMAIN}"


def test_a_new_list_receives_from_its_first_second(bed: Testbed) -> None:
    """Mail sent at once after `mailman create`: Mailman gets it, local(8) does not bounce it.

    smtpd opens Mailman's rewritten table at once; trivial-rewrite and the
    queue manager keep the old one until Postfix reloads, which the relay's
    path unit does when the table changes.  A message just before the list
    is created keeps trivial-rewrite's connections busy, as on a live relay.
    """
    wait_for_mailman(bed)
    warm = bed.swaks("--from", f"stranger@{OUTSIDE_DOMAIN}", "--to", LIST_ADDRESS, source=CLEAN_CLIENT_ADDRESS)
    assert final_reply(warm.stdout, "250 2.0.0"), replies(warm.stdout)
    bed.relay.check(f"runuser -u list -- mailman create {NEW_LIST_ADDRESS}", timeout=120)
    message_id = new_message_id("mailman-first-second")
    sent = bed.swaks(
        "--from", f"stranger@{OUTSIDE_DOMAIN}", "--to", NEW_LIST_ADDRESS,
        "--header", f"Message-Id: <{message_id}>", source=CLEAN_CLIENT_ADDRESS,
    )  # fmt: skip
    assert final_reply(sent.stdout, "250 2.0.0"), f"the relay refused the new list's mail: {replies(sent.stdout)}"
    line = wait_for_delivery(bed, bed.relay, message_id, rf"to=<{re.escape(NEW_LIST_ADDRESS)}>.*status=")
    assert "status=sent" in line, line
    assert f":{MAILMAN_LMTP_PORT}" in line, line


# --- Mailman's answers to a stranger, bounded (docs/open-internet.md) -------

LEAVE_ADDRESS = f"e2e-mailman-leave@{DOMAIN}"
ANSWER_TIMEOUT = 180.0
QUIET_SECONDS = 10.0  # a later answer would come in this time


def ensure_list(bed: Testbed) -> None:
    wait_for_mailman(bed)
    if LIST_ADDRESS not in bed.relay.check("runuser -u list -- mailman lists", timeout=120):
        bed.relay.check(f"runuser -u list -- mailman create {LIST_ADDRESS}", timeout=120)


def leave_request(bed: Testbed, sender: str) -> str:
    """A stranger's message to the list's -leave address, From: and envelope `sender`: the reply to its DATA."""
    sent = bed.swaks(
        "--from", sender, "--to", LEAVE_ADDRESS, "--header", "Subject: leave",
        "--body", "Please remove me.\n", source=CLEAN_CLIENT_ADDRESS,
    )  # fmt: skip
    return final_reply(sent.stdout, "250 2.0.0") or final_reply(sent.stdout, "451") or " | ".join(replies(sent.stdout))


def test_mailmans_answers_to_a_stranger_are_bounded_per_sender_and_in_all(bed: Testbed) -> None:
    """A non-member's -leave makes Mailman answer the sender, signed: a few an hour per sender, and in all."""
    ensure_list(bed)
    per_sender, in_all = render.LIST_ANSWERS_PER_SENDER_AN_HOUR, render.LIST_ANSWERS_AN_HOUR
    word = secrets.token_hex(4)
    victim = f"victim-{word}@{OUTSIDE_DOMAIN}"
    first = [leave_request(bed, victim) for _ in range(per_sender + 2)]
    bed.notes.append(f"{bed.name}: {per_sender + 2} -leave messages naming one sender: {first}")
    assert [reply[:3] for reply in first] == ["250"] * per_sender + ["451"] * 2, first
    assert all("Ratelimit" in reply for reply in first[per_sender:]), first
    # Positive control: Mailman's answer reaches that sender; no more of them than were accepted.
    bed.sink.wait_for("Mailman's answer to the named sender", lambda m: victim in m.rcpt_to, ANSWER_TIMEOUT)
    time.sleep(QUIET_SECONDS)
    answers = bed.sink.messages_to(victim)
    bed.notes.append(f"{bed.name}: Mailman's answers to that sender at the sink: {len(answers)}")
    assert 1 <= len(answers) <= per_sender, f"{len(answers)} answers to {victim}"
    # Distinct senders: the hour's bound in all (its bucket leaks one message every 3600/in_all s).
    others = [leave_request(bed, f"named-{index}-{word}@{OUTSIDE_DOMAIN}") for index in range(in_all)]
    accepted = per_sender + sum(reply.startswith("250") for reply in others)
    bed.notes.append(
        f"{bed.name}: then {in_all} naming distinct senders: {accepted} accepted in all, last {others[-1]}"
    )
    assert in_all <= accepted <= in_all + 1, others
    assert others[-1].startswith("451 4.7.1"), others[-1]
