"""Unit tests for scripts/oignons_mail_responder.py (the donation auto-reply).

Everything runs locally: the state directory lives in tmp_path and SMTP
traffic only goes to a throw-away server bound to 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import email
import hashlib
import importlib.util
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
from types import ModuleType
from typing import Any

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "oignons_mail_responder.py"


def _load_responder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oignons_mail_responder", _SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while decorating.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


responder = _load_responder()

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
        "global_reply_limit": GLOBAL_LIMIT,
        "global_window_seconds": HOUR,
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
    assert all(len(line) <= 78 for line in lines)


def test_reply_extends_existing_references() -> None:
    message = parse(
        raw_message(
            "In-Reply-To: <parent@example.net>",
            "References: <root@example.net>\r\n <parent@example.net>",
            message_id="<child@example.org>",
        )
    )
    reply = build(message)
    assert reply["In-Reply-To"] == "<child@example.org>"
    assert reply["References"].split() == [
        "<root@example.net>",
        "<parent@example.net>",
        "<child@example.org>",
    ]


def test_reply_references_fall_back_to_in_reply_to() -> None:
    message = parse(raw_message("In-Reply-To: <parent@example.net>", message_id="<child@example.org>"))
    assert build(message)["References"].split() == [
        "<parent@example.net>",
        "<child@example.org>",
    ]


def test_reply_without_message_id_has_no_in_reply_to() -> None:
    reply = build(parse(raw_message(message_id=None)))
    assert reply["In-Reply-To"] is None
    assert reply["References"] is None
    assert reply["Auto-Submitted"] == "auto-replied"


def test_long_message_ids_stay_verbatim() -> None:
    long_id = "<" + "x" * 120 + "@example.org>"
    references = " ".join(f"<ref{i}@example.net>" for i in range(30))
    reply = build(parse(raw_message(f"References: {references}", message_id=long_id)))
    assert reply["In-Reply-To"] == long_id
    sent = reply["References"].split()
    assert "=?" not in reply["References"]
    assert sent[0] == "<ref0@example.net>"
    assert sent[-1] == long_id
    assert len(sent) == 20


def test_garbage_message_ids_are_not_copied() -> None:
    message = parse(raw_message(message_id="not a msg-id"))
    reply = build(message)
    assert reply["In-Reply-To"] is None


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
