"""Helpers of the end-to-end cases: sending mail, reading the mail logs, swaks replies."""

from __future__ import annotations

import email
import email.policy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.e2e.machines import RELAY_WORLD_ADDRESS, Container, wait_until
from tests.e2e.testbed import Testbed, new_message_id

DELIVERY_TIMEOUT = 90.0


@dataclass(frozen=True)
class Sent:
    message_id: str
    token: str  # a unique word of the body, to find the message again


def compose(message_id: str, subject: str, token: str, headers: dict[str, str] | None = None) -> str:
    lines = [f"Message-Id: <{message_id}>", f"Subject: {subject}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\n".join(lines) + f"\n\nThis is an oignons-mail end-to-end test message.\nToken: {token}\n"


def sendmail(container: Container, recipient: str, label: str, sender: str | None = None) -> Sent:
    """Submit a message with the system's sendmail(1), as root."""
    message_id = new_message_id(label)
    token = message_id.split("@")[0]
    option = f" -f {sender}" if sender else ""
    container.check(
        f"/usr/sbin/sendmail -oi{option} {recipient}",
        input_text=compose(message_id, f"e2e {label}", token),
    )
    return Sent(message_id, token)


def queue_ids(log: str, message_id: str) -> list[str]:
    """Every queue ID that carried the message (pickup, then each forward)."""
    return re.findall(rf"\]: ([0-9A-Za-z]+): message-id=<{re.escape(message_id)}>", log)


def delivery_lines(log: str, message_id: str) -> list[str]:
    """The `QUEUEID: to=<...>` lines of every queue ID of the message."""
    ids = queue_ids(log, message_id)
    return [line for line in log.splitlines() for queue_id in ids if f"]: {queue_id}: to=<" in line]


class MailLogs(Protocol):
    """A test bed that reads its systems' mail logs (Testbed, Fleet)."""

    def mail_log(self, container: Container) -> str: ...


def wait_for_delivery(
    bed: MailLogs, container: Container, message_id: str, pattern: str, timeout: float = DELIVERY_TIMEOUT
) -> str:
    """Wait for a delivery line of the message matching pattern; return it."""
    regex = re.compile(pattern)

    def probe() -> str | None:
        return next((line for line in delivery_lines(bed.mail_log(container), message_id) if regex.search(line)), None)

    try:
        return wait_until(f"a delivery of <{message_id}> matching {pattern!r} on {container.machine}", probe, timeout)
    except AssertionError as error:
        lines = delivery_lines(bed.mail_log(container), message_id)
        raise AssertionError(f"{error}\nthe message's delivery lines so far:\n" + "\n".join(lines)) from None


def smtp_process(line: str) -> str:
    """'postfix/smtp[652]' of a log line."""
    found = re.search(r" (postfix[\w/.-]*\[\d+\]):", line)
    return found.group(1) if found else ""


def replies(swaks_output: str) -> list[str]:
    """The server's replies in swaks' transcript ("<-  250 ...", "<** 550 ...", "<~  ..." over TLS)."""
    found = []
    for line in swaks_output.splitlines():
        matched = re.match(r"^<[-~*]+\s+(\d{3}[ -].*)$", line)
        if matched:
            found.append(matched.group(1))
    return found


def final_reply(swaks_output: str, code_prefix: str) -> str | None:
    return next((reply for reply in replies(swaks_output) if reply.startswith(code_prefix)), None)


def message_text(data: str) -> str:
    """The decoded text of every text part of a message."""
    message = email.message_from_string(data, policy=email.policy.default)
    texts = []
    for part in message.walk():
        if part.get_content_maintype() == "text" or part.get_content_type() == "application/octet-stream":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(texts)


def header(data: str, name: str) -> str:
    message = email.message_from_string(data, policy=email.policy.default)
    return str(message.get(name, ""))


# One SMTP session of raw_smtp.py: [step text (None for the greeting), [replies]].
Transcript = list[tuple[str | None, list[str]]]


def raw_smtp(
    bed: Testbed,
    steps: list[tuple[str, int]],
    *,
    port: int = 25,
    source: str | None = None,
    connections: int = 1,
    timeout: float = 120.0,
) -> list[Transcript]:
    """Raw SMTP sessions from the outside world to the relay (tests/e2e/raw_smtp.py): bytes as given."""
    request = {"host": RELAY_WORLD_ADDRESS, "port": port, "source": source, "connections": connections,
               "steps": steps}  # fmt: skip
    result = bed.world(
        ["/usr/bin/python3", str(Path(__file__).with_name("raw_smtp.py"))], timeout, json.dumps(request)
    ).check("raw_smtp.py")
    return [[(text, [str(r) for r in got]) for text, got in session] for session in json.loads(result.stdout)]


def reply_to(transcript: Transcript, prefix: str) -> list[str]:
    """The replies to the steps whose text starts with prefix."""
    return [reply for text, got in transcript if text is not None and text.startswith(prefix) for reply in got]
