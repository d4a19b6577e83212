"""Unit tests for scripts/oignons_mail_responder.py (the donation auto-reply).

Everything runs locally: the state directory lives in tmp_path and SMTP
traffic only goes to a throw-away server bound to 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import email
import hashlib
import io
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
from tests.responder_script import SCRIPT, load_responder

_SCRIPT = SCRIPT
responder = load_responder()

OWN_ADDRESS = "dons@nos-oignons.net"
SENDER = "alice@example.org"
IBAN = "FR76 1234 5678 9012 3456 7890 123"
BODY = (
    "Bonjour,\n\n"
    "Merci de votre intérêt pour Nos oignons !\n"
    f"Vous pouvez faire un virement sur notre compte : IBAN {IBAN}\n\n"
    "Thank you for supporting Nos oignons!\n"
)
WEEK = 604800
START = 1_700_000_000.0
SOCKET_TIMEOUT = 5.0


def raw_message(
    *extra_headers: str,
    message_id: str | None = "<donation-1@example.org>",
    sender: str = SENDER,
) -> bytes:
    """A plausible incoming RFC 5322 message, as Postfix pipe(8) feeds it."""
    headers = [
        f"Return-Path: <{sender}>",
        f"From: Alice <{sender}>",
        f"To: {OWN_ADDRESS}",
        "Subject: Un don pour Nos oignons",
        "Date: Mon, 25 Nov 2024 10:00:00 +0100",
    ]
    if message_id is not None:
        headers.append(f"Message-ID: {message_id}")
    headers += [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        *extra_headers,
    ]
    body = "Bonjour, comment puis-je faire un don ?\r\n"
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


GLOBAL_LIMIT = 5
HOUR = 3600
OWN_DOMAINS = ["nos-oignons.net", "bulbe.nos-oignons.net"]


def config_data(state_directory: Path, port: int, /, **changes: Any) -> dict[str, Any]:
    """The responder's JSON configuration, as render.responder_config() writes it."""
    data: dict[str, Any] = {
        "from_address": OWN_ADDRESS,
        "subject": "Re: donations / dons",
        "body": BODY,
        "rate_limit_seconds": WEEK,
        "global_rate_limit": GLOBAL_LIMIT,
        "global_rate_window_seconds": HOUR,
        "recipient_delimiter": "+",
        "own_domains": OWN_DOMAINS,
        "state_directory": str(state_directory),
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
    }
    data.update(changes)
    return data


def make_config(state_directory: Path, port: int = 25) -> Any:
    data = config_data(state_directory, port)
    return responder.Config(
        **{**data, "own_domains": tuple(OWN_DOMAINS), "state_directory": state_directory},
    )


def write_config(path: Path, state_directory: Path, port: int, /, **changes: Any) -> Path:
    path.write_text(json.dumps(config_data(state_directory, port, **changes)), encoding="utf-8")
    return path


# A minimal SMTP server, enough for smtplib's sendmail().


@dataclasses.dataclass
class Transaction:
    mail_from: str
    rcpt_to: list[str]
    data: bytes


class SMTPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SMTPHandler)
        self.transactions: list[Transaction] = []
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class SMTPHandler(socketserver.StreamRequestHandler):
    # StreamRequestHandler applies this to the accepted socket.
    timeout = SOCKET_TIMEOUT

    def _send(self, *lines: str) -> None:
        self.wfile.write(b"".join(line.encode("ascii") + b"\r\n" for line in lines))
        self.wfile.flush()

    @staticmethod
    def _argument(command: str) -> str:
        value = command.split(":", 1)[1].strip() if ":" in command else ""
        return value.split()[0] if value else ""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, SMTPServer)
        with server.lock:
            server.connections += 1
        self._send("220 localhost test ESMTP")
        mail_from: str | None = None
        rcpt_to: list[str] = []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            command = line.decode("ascii", "replace").rstrip("\r\n")
            verb = command[:4].upper()
            if verb == "EHLO":
                self._send("250-localhost", "250 8BITMIME")
            elif verb == "HELO":
                self._send("250 localhost")
            elif verb == "MAIL":
                mail_from, rcpt_to = self._argument(command), []
                self._send("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpt_to.append(self._argument(command))
                self._send("250 2.1.5 Ok")
            elif verb == "DATA":
                self._send("354 End data with <CR><LF>.<CR><LF>")
                data = self._read_data()
                assert mail_from is not None
                with server.lock:
                    server.transactions.append(Transaction(mail_from, rcpt_to, data))
                self._send("250 2.0.0 Ok: queued")
            elif verb in ("RSET", "NOOP"):
                self._send("250 2.0.0 Ok")
            elif verb == "QUIT":
                self._send("221 2.0.0 Bye")
                return
            else:
                self._send("502 5.5.2 Error: command not recognized")

    def _read_data(self) -> bytes:
        lines: list[bytes] = []
        while True:
            line = self.rfile.readline(65536)
            if not line or line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b"..") else line)


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SOCKET_TIMEOUT)


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and no other process
    # can take the port while the test runs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@pytest.fixture(autouse=True)
def _short_smtp_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responder, "SMTP_TIMEOUT_SECONDS", SOCKET_TIMEOUT)


@pytest.fixture
def state_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


class Run:
    """Runs main() the way pipe(8) would, collecting the log lines."""

    def __init__(self, config_path: Path, clock: FakeClock) -> None:
        self.config_path = config_path
        self.clock = clock
        self.log: list[str] = []

    def __call__(self, raw: bytes, sender: str = SENDER) -> int:
        argv = [
            "--config",
            str(self.config_path),
            "--sender",
            sender,
            "--recipient",
            OWN_ADDRESS,
        ]
        status: int = responder.main(argv, io.BytesIO(raw), log=self.log.append, clock=self.clock)
        return status


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def run(tmp_path: Path, state_directory: Path, smtp_server: SMTPServer, clock: FakeClock) -> Run:
    config = write_config(tmp_path / "responder.json", state_directory, smtp_server.port)
    return Run(config, clock)


@pytest.fixture
def run_without_smtp(tmp_path: Path, state_directory: Path, closed_port: int, clock: FakeClock) -> Run:
    config = write_config(tmp_path / "responder.json", state_directory, closed_port)
    return Run(config, clock)


# Rules deciding not to reply.

AUTOMATED_SENDERS = [
    pytest.param("", id="null-sender"),
    pytest.param("MAILER-DAEMON", id="mailer-daemon-bare"),
    pytest.param("mailer-daemon", id="mailer-daemon-lowercase"),
    pytest.param("MAILER-DAEMON@relay.example.org", id="mailer-daemon-local-part"),
    pytest.param("owner-tor-relays@lists.example.org", id="owner-prefix"),
    pytest.param("tor-relays-request@lists.example.org", id="request-suffix"),
    pytest.param("tor-relays-owner@lists.example.org", id="owner-suffix"),
    pytest.param("tor-relays-bounces@lists.example.org", id="bounces-suffix"),
    pytest.param("tor-relays-bounces+alice=example.org@lists.example.org", id="bounces-verp"),
    pytest.param("postmaster@example.org", id="postmaster"),
    pytest.param("PostMaster@example.org", id="postmaster-mixed-case"),
    pytest.param("listserv@lists.example.org", id="listserv"),
    pytest.param("majordomo@lists.example.org", id="majordomo"),
    pytest.param("noreply@bank.example", id="noreply"),
    pytest.param("No-Reply@bank.example", id="no-reply"),
    pytest.param("do-not-reply@bank.example", id="do-not-reply"),
    pytest.param(OWN_ADDRESS, id="own-address"),
    pytest.param("DONS@Nos-Oignons.net", id="own-address-mixed-case"),
    pytest.param("not an address", id="unparsable"),
    pytest.param("alice@", id="no-domain"),
    pytest.param("alice@example.org\r\nBcc: victim@example.org", id="header-injection"),
    pytest.param("élodie@exemple.fr", id="non-ascii"),
]


@pytest.mark.parametrize("sender", AUTOMATED_SENDERS)
def test_no_reply_to_automated_or_unusable_sender(sender: str) -> None:
    reason = responder.reason_not_to_reply(parse(raw_message()), sender, OWN_ADDRESS)
    assert reason is not None


AUTOMATED_HEADERS = [
    pytest.param("Auto-Submitted: auto-generated", id="auto-generated"),
    pytest.param("Auto-Submitted: auto-replied", id="auto-replied"),
    pytest.param("Auto-Submitted: Auto-Replied (vacation)", id="auto-replied-comment"),
    pytest.param("Auto-Submitted: auto-notified; owner-email=x@example.org", id="auto-notified"),
    pytest.param("Auto-Submitted: yes-please", id="auto-submitted-unknown"),
    pytest.param("Auto-Submitted:", id="auto-submitted-empty"),
    pytest.param("List-Id: Tor relays <tor-relays.lists.example.org>", id="list-id"),
    pytest.param("List-Unsubscribe: <mailto:x@example.org>", id="list-unsubscribe"),
    pytest.param("List-Post: <mailto:tor-relays@example.org>", id="list-post"),
    pytest.param("List-Help: <mailto:x-request@example.org>", id="list-help"),
    pytest.param("List-Subscribe: <mailto:x@example.org>", id="list-subscribe"),
    pytest.param("List-Owner: <mailto:x-owner@example.org>", id="list-owner"),
    pytest.param("List-Archive: <https://lists.example.org/x>", id="list-archive"),
    pytest.param("Precedence: bulk", id="precedence-bulk"),
    pytest.param("Precedence: List", id="precedence-list"),
    pytest.param("Precedence: junk", id="precedence-junk"),
    pytest.param("X-Auto-Response-Suppress: All", id="suppress-all"),
    pytest.param("X-Auto-Response-Suppress: oof", id="suppress-oof"),
    pytest.param("X-Auto-Response-Suppress: DR, AutoReply", id="suppress-autoreply"),
    pytest.param(f"X-Loop: {OWN_ADDRESS}", id="x-loop"),
    pytest.param("X-Loop: Dons\r\n <DONS@nos-oignons.net>", id="x-loop-folded"),
]


@pytest.mark.parametrize("header", AUTOMATED_HEADERS)
def test_no_reply_to_automated_or_list_message(header: str) -> None:
    message = parse(raw_message(header))
    reason = responder.reason_not_to_reply(message, SENDER, OWN_ADDRESS)
    assert reason is not None
    # Also through the lenient parser used by main().
    lenient = responder.parse_message(raw_message(header))
    assert responder.reason_not_to_reply(lenient, SENDER, OWN_ADDRESS) == reason


HARMLESS_HEADERS = [
    pytest.param("Auto-Submitted: no", id="auto-submitted-no"),
    pytest.param("Auto-Submitted: No (sent by a human)", id="auto-submitted-no-comment"),
    pytest.param("Auto-Submitted: no; foo=bar", id="auto-submitted-no-parameter"),
    pytest.param("Precedence: first-class", id="precedence-first-class"),
    pytest.param("X-Auto-Response-Suppress: DR, RN, NRN", id="suppress-receipts"),
    pytest.param("X-Loop: someone-else@example.org", id="foreign-x-loop"),
    pytest.param("Reply-To: noreply@example.org", id="reply-to-is-ignored"),
]


@pytest.mark.parametrize("header", HARMLESS_HEADERS)
def test_reply_despite_harmless_header(header: str) -> None:
    message = parse(raw_message(header))
    assert responder.reason_not_to_reply(message, SENDER, OWN_ADDRESS) is None


@pytest.mark.parametrize(
    "sender",
    [
        "alice@example.org",
        "Alice.Smith+dons@Example.ORG",
        "noreply.fan@example.org",
        "request-info@example.org",
        '"john doe"@example.org',
    ],
)
def test_reply_to_ordinary_sender(sender: str) -> None:
    assert responder.reason_not_to_reply(parse(raw_message()), sender, OWN_ADDRESS) is None


def test_no_reply_to_sender_equal_to_recipient() -> None:
    message = parse(raw_message())
    reason = responder.reason_not_to_reply(message, "board@nos-oignons.net", OWN_ADDRESS, "board@nos-oignons.net")
    assert reason is not None


# The reply itself.


def build(message: Message, sender: str = SENDER) -> EmailMessage:
    config = make_config(Path("/nonexistent"))
    now = datetime(2024, 11, 25, 10, 0, tzinfo=UTC)
    reply = responder.build_reply(message, sender, config, now)
    assert isinstance(reply, EmailMessage)
    # Round-trip through bytes to check what is really sent.
    return parse(reply.as_bytes())


def test_reply_headers_and_body() -> None:
    reply = build(parse(raw_message()))
    assert reply["From"] == OWN_ADDRESS
    assert reply["To"] == SENDER
    assert reply["Subject"] == "Re: donations / dons"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Loop"] == OWN_ADDRESS
    assert reply["In-Reply-To"] == "<donation-1@example.org>"
    assert reply["References"] == "<donation-1@example.org>"
    assert reply["Message-ID"].endswith("@nos-oignons.net>")
    assert reply["Message-ID"] != "<donation-1@example.org>"
    assert reply["Date"].datetime == datetime(2024, 11, 25, 10, 0, tzinfo=UTC)
    assert reply.get_content_type() == "text/plain"
    assert reply.get_content_charset() == "utf-8"
    content = reply.get_content()
    assert IBAN in content
    assert "intérêt" in content
    assert not reply.defects


def test_reply_uses_crlf_and_short_lines() -> None:
    config = make_config(Path("/nonexistent"))
    now = datetime(2024, 11, 25, 10, 0, tzinfo=UTC)
    data = responder.build_reply(parse(raw_message()), SENDER, config, now).as_bytes()
    lines = data.split(b"\r\n")
    assert b"\n" not in b"".join(lines)
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)


def test_reply_names_its_parent_only() -> None:
    """The stranger's References chain is not copied into a signed reply: the parent's msg-id alone."""
    message = parse(
        raw_message(
            "In-Reply-To: <parent@example.net>",
            "References: <root@example.net>\r\n <parent@example.net>",
            message_id="<child@example.org>",
        )
    )
    reply = build(message)
    assert reply["In-Reply-To"] == "<child@example.org>"
    assert reply["References"] == "<child@example.org>"


def test_reply_without_message_id_has_no_in_reply_to() -> None:
    reply = build(parse(raw_message(message_id=None)))
    assert reply["In-Reply-To"] is None
    assert reply["References"] is None
    assert reply["Auto-Submitted"] == "auto-replied"


def test_a_message_id_of_the_longest_accepted_length_stays_verbatim() -> None:
    longest = "<" + "x" * 86 + "@example.org>"
    assert len(longest) == 100
    reply = build(parse(raw_message(message_id=longest)))
    assert reply["In-Reply-To"] == longest
    assert "=?" not in reply["References"]


@pytest.mark.parametrize(
    "message_id",
    [
        "not a msg-id",
        "<" + "x" * 87 + "@example.org>",  # 101 characters
        "<buy cheap at evil.example@example.org>",  # words
        '<"quoted words"@example.org>',
        "<a@b> <c@d>",  # two
        "Read this <a@example.org>",  # text around one
        "<a@[192.0.2.1]>",
    ],
)
def test_other_message_ids_are_not_copied(message_id: str) -> None:
    reply = build(parse(raw_message(message_id=message_id)))
    assert reply["In-Reply-To"] is None
    assert reply["References"] is None


# Rate limiting.


def test_rate_limit_window(state_directory: Path) -> None:
    clock = FakeClock()
    limiter = responder.RateLimiter(state_directory, WEEK, clock=clock)
    with limiter.reserve(SENDER) as reservation:
        assert not reservation.limited
        reservation.record()

    clock.advance(WEEK - 1)
    with limiter.reserve(SENDER) as reservation:
        assert reservation.limited

    clock.advance(1)
    with limiter.reserve(SENDER) as reservation:
        assert not reservation.limited
        reservation.record()
    assert limiter.last_reply(SENDER) == pytest.approx(START + WEEK)


def test_rate_limit_is_case_insensitive(state_directory: Path) -> None:
    limiter = responder.RateLimiter(state_directory, WEEK, clock=FakeClock())
    with limiter.reserve("Alice@Example.ORG") as reservation:
        reservation.record()
    with limiter.reserve("alice@example.org") as reservation:
        assert reservation.limited
    expected = hashlib.sha256(b"alice@example.org").hexdigest()
    assert os.listdir(state_directory) == [expected]
    state = state_directory / expected
    assert state.stat().st_mtime == pytest.approx(START)


def test_unrecorded_reservation_leaves_no_state(state_directory: Path) -> None:
    limiter = responder.RateLimiter(state_directory, WEEK, clock=FakeClock())
    with limiter.reserve(SENDER) as reservation:
        assert reservation.path.exists()
    assert os.listdir(state_directory) == []
    assert limiter.last_reply(SENDER) is None


def test_concurrent_reservation_waits_for_the_lock(state_directory: Path) -> None:
    limiter = responder.RateLimiter(state_directory, WEEK, clock=FakeClock(), lock_timeout=0.2)

    def second_delivery() -> None:
        with limiter.reserve(SENDER):
            pytest.fail("a second holder got the lock")

    with limiter.reserve(SENDER), pytest.raises(TimeoutError, match="waiting for a lock"):
        second_delivery()


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "not-recorded"])
def test_waiter_sees_outcome_of_first_holder(state_directory: Path, record: bool) -> None:
    limiter = responder.RateLimiter(state_directory, WEEK, clock=FakeClock(), lock_timeout=SOCKET_TIMEOUT)
    waiter_result: list[bool] = []
    waiter_started = threading.Event()

    def waiter() -> None:
        waiter_started.set()
        with limiter.reserve(SENDER) as reservation:
            waiter_result.append(reservation.limited)

    with limiter.reserve(SENDER) as reservation:
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        assert waiter_started.wait(SOCKET_TIMEOUT)
        if record:
            reservation.record()
    thread.join(SOCKET_TIMEOUT)
    assert not thread.is_alive()
    # Either the reply recorded by the first holder stops the second one, or
    # (after a failed submission removed the file) the second one may reply.
    assert waiter_result == [record]


# main(), end to end.


def test_main_sends_one_reply_by_smtp(run: Run, smtp_server: SMTPServer) -> None:
    assert run(raw_message()) == 0
    assert len(smtp_server.transactions) == 1
    transaction = smtp_server.transactions[0]
    assert transaction.mail_from == "<>"
    assert transaction.rcpt_to == [f"<{SENDER}>"]
    reply = parse(transaction.data)
    assert reply["From"] == OWN_ADDRESS
    assert reply["To"] == SENDER
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<donation-1@example.org>"
    assert reply["References"] == "<donation-1@example.org>"
    assert reply["X-Loop"] == OWN_ADDRESS
    assert IBAN in reply.get_content()
    assert any("replied to" in line for line in run.log)


def test_main_rate_limits_per_sender(
    run: Run, smtp_server: SMTPServer, clock: FakeClock, state_directory: Path
) -> None:
    assert run(raw_message()) == 0
    state = state_directory / hashlib.sha256(SENDER.encode()).hexdigest()
    assert state.stat().st_mtime == pytest.approx(START)

    clock.advance(3600)
    assert run(raw_message(message_id="<donation-2@example.org>")) == 0
    assert run(raw_message(), sender="ALICE@Example.org") == 0
    assert len(smtp_server.transactions) == 1
    assert "rate limit" in run.log[-1]

    assert run(raw_message(), sender="bob@example.net") == 0
    assert len(smtp_server.transactions) == 2

    clock.advance(WEEK)
    assert run(raw_message(message_id="<donation-3@example.org>")) == 0
    assert len(smtp_server.transactions) == 3
    assert state.stat().st_mtime == pytest.approx(START + 3600 + WEEK)


def test_main_logs_rule_and_does_not_connect(run: Run, smtp_server: SMTPServer) -> None:
    assert run(raw_message("Precedence: bulk")) == 0
    assert run(raw_message(), sender="") == 0
    assert smtp_server.connections == 0
    assert len(run.log) == 2
    assert "Precedence: bulk" in run.log[0]
    assert "null envelope sender" in run.log[1]


def test_main_smtp_failure_defers_and_records_nothing(run_without_smtp: Run, state_directory: Path) -> None:
    assert run_without_smtp(raw_message()) == 75
    # The global limit's slot is given back: the retry may use it.
    assert os.listdir(state_directory) == [responder.GLOBAL_STATE]
    assert (state_directory / responder.GLOBAL_STATE).read_bytes() == b""
    assert "deferring" in run_without_smtp.log[-1]


def test_main_unusable_state_directory_defers(tmp_path: Path, smtp_server: SMTPServer, clock: FakeClock) -> None:
    config = write_config(tmp_path / "responder.json", tmp_path / "missing", smtp_server.port)
    run = Run(config, clock)
    assert run(raw_message()) == 75
    assert smtp_server.connections == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\xff\xfe garbage without headers\n", id="binary-garbage"),
        pytest.param(b"Subject: caf\xe9\nFrom: <<<>>>\nMessage-ID: <<>\n\n", id="broken"),
        pytest.param(b"Auto-Submitted\n\n", id="header-without-colon"),
    ],
)
def test_main_survives_unparsable_message(run: Run, smtp_server: SMTPServer, raw: bytes) -> None:
    assert run(raw) == 0
    assert len(smtp_server.transactions) == 1
    assert IBAN in parse(smtp_server.transactions[0].data).get_content()


def test_main_sender_starting_with_dash(run: Run, smtp_server: SMTPServer) -> None:
    assert run(raw_message(), sender="-alice@example.org") == 0
    assert smtp_server.transactions[0].rcpt_to == ["<-alice@example.org>"]


def test_main_does_not_defer_when_recording_fails(
    run: Run, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_record(self: object) -> None:
        raise PermissionError("read-only state directory")

    monkeypatch.setattr(responder.Reservation, "record", broken_record)
    # Deferring here would make Postfix retry and send a second reply.
    assert run(raw_message()) == 0
    assert len(smtp_server.transactions) == 1
    assert "could not record" in run.log[-1]


def test_main_defers_on_internal_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(responder, "build_reply", broken_build)
    assert run(raw_message()) == 75
    assert "internal error" in run.log[-1]


def test_script_runs_as_a_command(tmp_path: Path, state_directory: Path, closed_port: int) -> None:
    config = write_config(tmp_path / "responder.json", state_directory, closed_port)
    command = [sys.executable, str(_SCRIPT), "--config", str(config), "--sender", "", "--recipient", OWN_ADDRESS]
    result = subprocess.run(command, input=raw_message(), capture_output=True, timeout=60, check=False)
    assert result.returncode == 0
    assert b"null envelope sender" in result.stderr
    assert b"Traceback" not in result.stderr


# Command line and configuration errors.


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-arguments"),
        pytest.param(["--sender", SENDER], id="no-config"),
        pytest.param(["--config", "/nonexistent.json"], id="no-sender"),
        pytest.param(["--config", "x", "--sender", SENDER, "--bogus"], id="unknown"),
        pytest.param(["--config", "x", "--sender", SENDER, "extra"], id="positional"),
    ],
)
def test_bad_arguments_exit_64(argv: list[str]) -> None:
    log: list[str] = []
    assert responder.main(argv, io.BytesIO(raw_message()), log=log.append) == 64
    assert log


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert responder.main(["--help"], io.BytesIO(b""), log=lambda line: None) == 0
    assert "--sender" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        pytest.param({"from_address": None}, "from_address", id="null-from"),
        pytest.param({"from_address": "dons"}, "from_address", id="bad-from"),
        pytest.param({"subject": "a\nBcc: x@example.org"}, "subject", id="subject-nl"),
        pytest.param({"body": ""}, "body", id="empty-body"),
        pytest.param({"rate_limit_seconds": "604800"}, "rate_limit_seconds", id="str"),
        pytest.param({"rate_limit_seconds": True}, "rate_limit_seconds", id="bool"),
        pytest.param({"rate_limit_seconds": -1}, "rate_limit_seconds", id="negative"),
        pytest.param({"state_directory": "state"}, "state_directory", id="relative"),
        pytest.param({"smtp_host": ""}, "smtp_host", id="empty-host"),
        pytest.param({"smtp_port": 0}, "smtp_port", id="port-zero"),
        pytest.param({"smtp_port": 70000}, "smtp_port", id="port-big"),
        pytest.param({"smtp_prot": 25}, "smtp_prot", id="unknown-key"),
    ],
)
def test_invalid_config_value(tmp_path: Path, state_directory: Path, changes: dict[str, Any], fragment: str) -> None:
    path = write_config(tmp_path / "responder.json", state_directory, 25, **changes)
    with pytest.raises(responder.ConfigError, match=fragment):
        responder.load_config(path)
    log: list[str] = []
    argv = ["--config", str(path), "--sender", SENDER]
    assert responder.main(argv, io.BytesIO(raw_message()), log=log.append) == 78
    assert fragment in log[-1]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "cannot read", id="missing-file"),
        pytest.param("{not json", "not valid JSON", id="invalid-json"),
        pytest.param("[]", "JSON object", id="not-an-object"),
        pytest.param('{"from_address": "dons@nos-oignons.net"}', "missing", id="keys"),
    ],
)
def test_unreadable_config(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "responder.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(responder.ConfigError, match=fragment):
        responder.load_config(path)
    log: list[str] = []
    argv = ["--config", str(path), "--sender", SENDER]
    assert responder.main(argv, io.BytesIO(raw_message()), log=log.append) == 78


def test_valid_config_is_loaded(tmp_path: Path, state_directory: Path) -> None:
    path = write_config(tmp_path / "responder.json", state_directory, 2525)
    config = responder.load_config(path)
    assert config == make_config(state_directory, 2525)


# Forged senders: the global limit, the +extension, the site's own domains.


def test_global_limit_caps_replies_to_distinct_senders(run: Run, smtp_server: SMTPServer, clock: FakeClock) -> None:
    senders = [f"forged{i}@victim{i}.example" for i in range(GLOBAL_LIMIT + 3)]
    assert [run(raw_message(), sender=sender) for sender in senders] == [0] * len(senders)
    assert [t.rcpt_to for t in smtp_server.transactions] == [[f"<{s}>"] for s in senders[:GLOBAL_LIMIT]]
    assert run.log[-1] == (
        f"no reply to {senders[-1]}: {GLOBAL_LIMIT} replies already sent within {HOUR}s (global rate limit)"
    )
    # One window later, the limit has room again.
    clock.advance(HOUR)
    assert run(raw_message(), sender="donor@example.net") == 0
    assert len(smtp_server.transactions) == GLOBAL_LIMIT + 1


def test_global_record_holds_only_the_window(
    run: Run, smtp_server: SMTPServer, clock: FakeClock, state_directory: Path
) -> None:
    for i in range(3 * GLOBAL_LIMIT):
        run(raw_message(), sender=f"donor{i}@example.net")
        clock.advance(HOUR / GLOBAL_LIMIT)
    assert len(smtp_server.transactions) == 3 * GLOBAL_LIMIT
    lines = (state_directory / responder.GLOBAL_STATE).read_text().splitlines()
    assert 0 < len(lines) <= GLOBAL_LIMIT


@pytest.mark.parametrize("delimiter", ["+", "-"])
def test_address_extensions_share_one_reply(run: Run, smtp_server: SMTPServer, delimiter: str, tmp_path: Path) -> None:
    if delimiter != "+":
        run.config_path = write_config(
            tmp_path / "responder.json", Path(json.loads(run.config_path.read_text())["state_directory"]),
            smtp_server.port, recipient_delimiter=delimiter,
        )  # fmt: skip
    senders = [f"target{delimiter}{i}@example.org" for i in range(1, 21)]
    assert [run(raw_message(), sender=sender) for sender in senders] == [0] * 20
    assert len(smtp_server.transactions) == 1
    assert run.log[-1] == (
        f"no reply to target{delimiter}20@example.org: already replied to target@example.org within"
        f" {WEEK}s (per-sender rate limit)"
    )


@pytest.mark.parametrize(
    ("sender", "delimiter", "key"),
    [
        ("a+1@x.example", "+", "a@x.example"),
        ("A+Tag+More@X.Example", "+", "a@x.example"),
        ("a-b+c@x.example", "-+", "a@x.example"),
        ("a+1@x.example", "", "a+1@x.example"),
        ("+1@x.example", "+", "+1@x.example"),
        ('"a+b"@x.example', "+", '"a@x.example'),
    ],
)
def test_rate_limit_key(sender: str, delimiter: str, key: str) -> None:
    assert responder.rate_limit_key(sender, delimiter) == key


@pytest.mark.parametrize(
    "sender",
    ["schleuder@nos-oignons.net", "machines@nos-oignons.net", "root@BULBE.nos-oignons.net"],
)
def test_no_reply_to_the_sites_own_domains(run: Run, smtp_server: SMTPServer, sender: str) -> None:
    assert run(raw_message(), sender=sender) == 0
    assert smtp_server.connections == 0
    domain = sender.rpartition("@")[2].lower()
    assert run.log == [
        f"no reply to {sender}: envelope sender is in the site's own domain {domain} (its lists and aliases)"
    ]


# rspamd's verdict, trusted only with the queue ID of this delivery.

QUEUE_ID = "4Xyz1Abc2Q"


def rspamd_headers(status: str = "No, score=1.20", action: str = "no action", results: str = "") -> tuple[str, ...]:
    return (
        f"X-Rspamd-Queue-Id: {QUEUE_ID}",
        f"X-Spam-Status: {status}",
        f"X-Rspamd-Action: {action}",
        "Authentication-Results: bulbe.nos-oignons.net;\r\n\t" + (results or "dkim=none; spf=none smtp.mailfrom=a@b"),
    )


SPF_COMMENT = "(bulbe.nos-oignons.net: domain of alice@example.org does not designate 192.0.2.1 as permitted sender)"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param(rspamd_headers(), None, id="ham"),
        pytest.param(
            rspamd_headers(results=f"dkim=pass header.d=example.org; spf=pass {SPF_COMMENT} smtp.mailfrom=a@b;"
                                   " dmarc=pass (policy=reject) header.from=example.org"),
            None, id="all-pass",
        ),
        pytest.param(rspamd_headers("Yes, score=9.30", "add header"),
                     "rspamd says spam (X-Spam-Status: Yes, score=9.30)", id="spam"),
        pytest.param(rspamd_headers(action="rewrite subject"), "rspamd says spam (X-Rspamd-Action: rewrite subject)",
                     id="action"),
        pytest.param(rspamd_headers(action="greylist"), None, id="greylist-is-not-spam"),
        pytest.param(rspamd_headers(results=f"dkim=none; spf=fail {SPF_COMMENT} smtp.mailfrom=alice@example.org"),
                     "rspamd: the sender's domain fails spf (spf=fail)", id="spf-fail"),
        pytest.param(rspamd_headers(results="spf=softfail (x) smtp.mailfrom=a@b"),
                     "rspamd: the sender's domain fails spf (spf=softfail)", id="spf-softfail"),
        pytest.param(rspamd_headers(results="dkim=fail (body hash did not verify) header.d=example.org"),
                     "rspamd: the sender's domain fails dkim (dkim=fail)", id="dkim-fail"),
        pytest.param(rspamd_headers(results="dkim=none; dmarc=fail reason=\"SPF not aligned\" header.from=example.org"
                                    " (policy=reject)"),
                     "rspamd: the sender's domain fails dmarc (dmarc=fail)", id="dmarc-fail"),
        pytest.param(rspamd_headers(results="spf=neutral (x) smtp.mailfrom=a@b; dkim=temperror"), None,
                     id="neutral"),
        # A comment holding "spf=fail" is not a result.
        pytest.param(rspamd_headers(results="spf=pass (spf=fail ((nested))) smtp.mailfrom=a@b"), None,
                     id="result-in-comment"),
    ],
)  # fmt: skip
def test_rspamd_verdict(headers: tuple[str, ...], reason: str | None) -> None:
    message = responder.parse_message(raw_message(*headers))
    assert responder.reason_not_to_reply(message, SENDER, OWN_ADDRESS, queue_id=QUEUE_ID) == reason


@pytest.mark.parametrize(
    ("queue_id", "headers"),
    [
        pytest.param("", rspamd_headers("Yes, score=20"), id="no-queue-id-given"),
        pytest.param("4OtherQid", rspamd_headers("Yes, score=20"), id="queue-id-differs"),
        pytest.param(QUEUE_ID, rspamd_headers("Yes, score=20")[1:], id="no-rspamd-queue-id"),
        pytest.param(QUEUE_ID, (), id="no-rspamd-at-all"),
    ],
)
def test_untrusted_or_absent_verdict_is_ignored(queue_id: str, headers: tuple[str, ...]) -> None:
    """Without rspamd's proof of origin, its verdict headers are the sender's words: only the rate limits apply."""
    message = responder.parse_message(raw_message(*headers))
    assert responder.rspamd_reason(message, queue_id) is None


@pytest.mark.parametrize("queue_id", [QUEUE_ID, "", "4OtherQid"])
@pytest.mark.parametrize(("value", "spam"), [("Yes", True), ("yes (x)", True), ("No", False), ("Yesterday", False)])
def test_x_spam_yes_needs_no_proof(queue_id: str, value: str, spam: bool) -> None:
    """rspamd's proxy header after a pre-result (no X-Spam-Status, no queue ID); a forged one only silences."""
    message = responder.parse_message(raw_message(f"X-Spam: {value}"))
    expected = "rspamd says spam (X-Spam: Yes)" if spam else None
    assert responder.rspamd_reason(message, queue_id) == expected


def test_main_declines_spam_by_the_trusted_verdict(run: Run, smtp_server: SMTPServer) -> None:
    argv = ["--config", str(run.config_path), "--sender", SENDER, "--queue-id", QUEUE_ID]
    raw = raw_message(*rspamd_headers("Yes, score=12.00", "add header"))
    assert responder.main(argv, io.BytesIO(raw), log=run.log.append, clock=run.clock) == 0
    assert smtp_server.connections == 0
    assert run.log == [f"{QUEUE_ID}: no reply to {SENDER}: rspamd says spam (X-Spam-Status: Yes, score=12.00)"]


# Comments, stripped in one pass.


@pytest.mark.parametrize(
    ("value", "stripped"),
    [
        ("auto-replied (by a robot)", "auto-replied"),
        ("(a (b) c) no", "no"),
        ("no (unclosed (comment", "no"),
        ("no) stray", "no) stray"),
        (r"(escaped \) paren) no", "no"),
        ('"quoted (not a comment)" x', '"quoted (not a comment)" x'),
        (r'"quoted \" still" (c) x', r'"quoted \" still"   x'),
        ("a(b)c", "a c"),
        ("(((x))) no", "no"),
        ("((x))) no", ") no"),
        ("((x) y", ""),
        ('"a((" (b)', '"a(("'),
        ("", ""),
        ("\\", "\\"),
    ],
)
def test_strip_comments(value: str, stripped: str) -> None:
    assert responder.strip_comments(value) == stripped


# Hostile messages: exit 0, the right decision, the reason logged (escaped).

NESTED = "(" * 20_000 + ")" * 20_000


@pytest.mark.parametrize(
    ("raw", "replied", "logged"),
    [
        pytest.param(raw_message().replace(b"\r\n\r\n", b"\r\nAuto-Submitted: auto-r\xe9plied\r\n\r\n", 1), False,
                     "Auto-Submitted: auto-r\\udce9plied", id="non-utf8-auto-submitted"),
        pytest.param(raw_message(f"Auto-Submitted: {NESTED} auto-replied"), False, "Auto-Submitted: auto-replied",
                     id="nested-comments-40k"),
        pytest.param(raw_message(f"Auto-Submitted: no {NESTED}"), True, "replied to", id="nested-comments-then-no"),
        pytest.param(raw_message(*[f"X-Filler-{i}: {NESTED}" for i in range(30)]), False,
                     f"header section larger than {1 << 20} bytes", id="huge-header-section"),
        pytest.param(raw_message("X-Long: " + "x" * 500_000), True, "replied to", id="one-500k-header"),
        pytest.param(raw_message(*[f"X-Many-{i}: y" for i in range(20_000)]), True, "replied to", id="20k-headers"),
        pytest.param(raw_message(f"Precedence: {'(' * 50_000}"), True, "replied to", id="unclosed-comments"),
        pytest.param(raw_message(f"X-Loop: {'<' * 100_000}"), True, "replied to", id="angle-brackets"),
        pytest.param(raw_message(f"References: {'<' * 100_000}"), True, "replied to", id="references-garbage"),
        pytest.param(raw_message("Content-Type: multipart/mixed") + b"--no boundary\r\n\xff\xfe\x00", True,
                     "replied to", id="malformed-mime"),
        pytest.param(raw_message("Content-Type: text/plain; charset=x-unknown") + b"\xc3\x28\xa0\xa1" * 10_000, True,
                     "replied to", id="undecodable-body"),
        pytest.param(raw_message("List-Id: \x1b[31m<evil\x00list>\r\n\tfolded"), False,
                     "mailing list header List-Id", id="control-characters"),
        pytest.param(b"Auto-Submitted: auto-replied\nX-\xff\xfe: \xff\n\n" + b"\x00" * 1000, False,
                     "Auto-Submitted: auto-replied", id="binary-header-names"),
        pytest.param(b"\r\n" * 100_000, True, "replied to", id="only-blank-lines"),
        pytest.param(b"Subject: " + b"\n " * 100_000 + b"\n\n", True, "replied to", id="100k-continuation-lines"),
    ],
)  # fmt: skip
def test_hostile_message_exits_0(run: Run, smtp_server: SMTPServer, raw: bytes, replied: bool, logged: str) -> None:
    assert run(raw) == 0
    assert len(smtp_server.transactions) == (1 if replied else 0)
    assert len(run.log) == 1
    assert logged in run.log[0]
    assert run.log[0].isascii(), run.log[0]
    assert run.log[0].isprintable(), run.log[0]
    assert len(run.log[0]) < 1000


def test_body_is_drained_not_kept(run: Run, smtp_server: SMTPServer) -> None:
    class CountingStream(io.BytesIO):
        largest = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            CountingStream.largest = max(CountingStream.largest, len(chunk))
            return chunk

    stream = CountingStream(raw_message() + b"x" * (10 << 20))
    argv = ["--config", str(run.config_path), "--sender", SENDER]
    assert responder.main(argv, stream, log=run.log.append, clock=run.clock) == 0
    assert stream.tell() == len(stream.getvalue()), "pipe(8) must be able to write the whole message"
    assert CountingStream.largest <= 1 << 16


@pytest.mark.parametrize(
    ("sender", "logged"),
    [
        pytest.param("alice\n@example.org", "unusable envelope sender address 'alice\\\\n@example.org'", id="newline"),
        pytest.param("\udcffalice@example.org", "'\\\\udcffalice@example.org'", id="undecodable"),
        pytest.param("a" * 5000 + "@example.org", "(5012 characters)", id="long"),
    ],
)
def test_hostile_sender_is_logged_escaped(run: Run, smtp_server: SMTPServer, sender: str, logged: str) -> None:
    assert run(raw_message(), sender=sender) == 0
    assert smtp_server.connections == 0
    assert logged in run.log[0]
    assert run.log[0].isascii()
    assert run.log[0].isprintable()


def test_a_parser_failure_is_no_reply_not_a_deferral(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_parser(data: bytes) -> None:
        raise UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(responder, "parse_message", broken_parser)
    assert run(raw_message()) == 0
    assert run.log == [
        f"no reply to {SENDER}: cannot interpret the message (UnicodeEncodeError: 'utf-8' codec can't encode"
        " character '\\\\udce9' in position 0: surrogates not allowed)"
    ]


def test_script_logs_non_utf8_headers_to_syslog_and_exits_0(
    tmp_path: Path, state_directory: Path, closed_port: int
) -> None:
    """The real log function (stderr and syslog(3)) with what made the old responder exit 75."""
    config = write_config(tmp_path / "responder.json", state_directory, closed_port)
    command = [sys.executable, str(_SCRIPT), "--config", str(config), "--sender", "\udce9@example.org"]
    raw = b"Auto-Submitted: auto-r\xe9plied\xff\n\n"
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
    result = subprocess.run(command, input=raw, capture_output=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b"oignons-mail-responder: no reply to \\udce9@example.org: unusable envelope sender" \
        b" address '\\\\udce9@example.org'\n"  # fmt: skip
    result = subprocess.run([*command[:-1], SENDER], input=raw, capture_output=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr
        == b"oignons-mail-responder: no reply to alice@example.org: Auto-Submitted: auto-r\\udce9plied\\udcff\n"
    )


# State: pruned, bounded, safe under concurrent responders.


def test_state_older_than_the_window_is_pruned(
    run: Run, smtp_server: SMTPServer, clock: FakeClock, state_directory: Path
) -> None:
    for i in range(4):
        run(raw_message(), sender=f"old{i}@example.net")
    limiter = responder.RateLimiter(state_directory, WEEK, clock=clock)
    old = {limiter.key(f"old{i}@example.net") for i in range(4)}
    assert old <= set(os.listdir(state_directory))
    clock.advance(WEEK)
    run(raw_message(), sender="new@example.net")
    assert set(os.listdir(state_directory)) == {limiter.key("new@example.net"), responder.GLOBAL_STATE}


def test_pruning_skips_a_state_file_in_use(state_directory: Path) -> None:
    clock = FakeClock()
    limiter = responder.RateLimiter(state_directory, WEEK, clock=clock)
    for sender in ("busy@example.net", "idle@example.net"):
        with limiter.reserve(sender) as reservation:
            reservation.record()
    clock.advance(2 * WEEK)
    with limiter.reserve("busy@example.net") as reservation:
        assert not reservation.limited
        assert limiter.prune() == 1
        reservation.record()
    assert os.listdir(state_directory) == [limiter.key("busy@example.net")]
    assert limiter.last_reply("busy@example.net") == pytest.approx(START + 2 * WEEK)


def test_concurrent_responders_respect_the_global_limit(
    tmp_path: Path, state_directory: Path, smtp_server: SMTPServer
) -> None:
    """pipe(8) runs several responders at once: the file locks keep the count exact."""
    config = write_config(tmp_path / "responder.json", state_directory, smtp_server.port, global_rate_limit=3)
    processes = [
        subprocess.Popen(
            [sys.executable, str(_SCRIPT), "--config", str(config), "--sender", f"forged{i}@victim.example"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(10)
    ]
    outputs = [process.communicate(raw_message(), timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 10
    assert len(smtp_server.transactions) == 3
    assert sum(b"(global rate limit)" in output for output in outputs) == 7
