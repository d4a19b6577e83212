#!/usr/bin/python3
"""Donation auto-responder for the Nos oignons mail relay.

Installed as /usr/lib/oignons-mail-relay/responder and run by Postfix's
pipe(8) as the unprivileged user ``oignons-responder``::

    responder unix - n n - - pipe flags=Rq user=oignons-responder null_sender=
      argv=/usr/lib/oignons-mail-relay/responder
      --config /usr/share/oignons-mail-relay/responder.json
      --sender ${sender} --recipient ${original_recipient}

The incoming message is read from standard input.  At most one reply per
envelope sender and rate window is sent, following RFC 3834 and the usual
vacation(1) rules, and it is submitted by SMTP with a null envelope sender so
that any bounce of the reply is discarded instead of looping back to us.

Exit codes follow sysexits(3) as interpreted by pipe(8): 0 when the message
was handled (whether or not a reply was sent), 75 (EX_TEMPFAIL) when Postfix
should retry later, 78 (EX_CONFIG) for a bad configuration file (also retried
by Postfix, giving the administrator time to fix it) and 64 (EX_USAGE) for bad
command-line arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import smtplib
import socket
import sys
import syslog
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

EX_OK = 0
EX_USAGE = 64
EX_TEMPFAIL = 75
EX_CONFIG = 78

PROGRAM = "oignons-mail-responder"

SMTP_TIMEOUT_SECONDS = 30.0
LOCK_TIMEOUT_SECONDS = 60.0
_LOCK_POLL_SECONDS = 0.05

# Local parts (compared case-insensitively, with and without a "+extension")
# that belong to robots, mailing-list software or people who asked not to be
# answered.
_EXACT_LOCAL_PARTS = frozenset(
    {
        "postmaster",
        "mailer-daemon",
        "listserv",
        "majordomo",
        "noreply",
        "no-reply",
        "do-not-reply",
    }
)
_LOCAL_PART_PREFIXES = ("owner-",)
_LOCAL_PART_SUFFIXES = ("-request", "-owner", "-bounces")

_LIST_HEADERS = frozenset(
    {
        "list-id",
        "list-unsubscribe",
        "list-post",
        "list-help",
        "list-subscribe",
        "list-owner",
        "list-archive",
    }
)
_BULK_PRECEDENCES = frozenset({"bulk", "list", "junk"})
_SUPPRESSING_TOKENS = frozenset({"all", "oof", "autoreply"})

# Only printable ASCII without angle brackets or spaces may appear in the
# msg-ids we copy into the reply, so that a hostile message cannot inject
# headers or produce something the folding code cannot handle.
_MSG_ID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
_MAX_REFERENCES = 20

# Message-IDs longer than a line would be turned into RFC 2047 encoded words
# by the email package's folder, which breaks threading; the References and
# In-Reply-To fields are therefore folded here and stored raw.
_REPLY_POLICY = policy.SMTP.clone(refold_source="none")
_HEADER_LINE_LENGTH = 78

_CONFIG_KEYS: dict[str, type] = {
    "from_address": str,
    "subject": str,
    "body": str,
    "rate_limit_seconds": int,
    "state_directory": str,
    "smtp_host": str,
    "smtp_port": int,
}

Log = Callable[[str], None]
Clock = Callable[[], float]


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class UsageError(Exception):
    """The command line is invalid."""

    def __init__(self, message: str, status: int = EX_USAGE) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Config:
    from_address: str
    subject: str
    body: str
    rate_limit_seconds: int
    state_directory: Path
    smtp_host: str
    smtp_port: int


# Checks run after the type check, with the message used when they fail.
_CONFIG_VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "from_address": (
        lambda value: _parse_address(value) is not None,
        "must be a plain ASCII address like dons@example.org",
    ),
    "subject": (
        lambda value: bool(value.strip()) and "\n" not in value and "\r" not in value,
        "must be a non-empty single line",
    ),
    "body": (lambda value: bool(value.strip()), "must not be empty"),
    "rate_limit_seconds": (lambda value: value >= 0, "must not be negative"),
    "state_directory": (os.path.isabs, "must be an absolute path"),
    "smtp_host": (
        lambda value: bool(value) and not any(c.isspace() for c in value),
        "must be a host name or address",
    ),
    "smtp_port": (lambda value: 0 < value < 65536, "must be between 1 and 65535"),
}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the JSON configuration; raise ConfigError if bad."""
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except OSError as error:
        raise ConfigError(f"cannot read {name}: {error}") from error
    except ValueError as error:
        raise ConfigError(f"{name} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: top level must be a JSON object")

    missing = sorted(set(_CONFIG_KEYS) - set(data))
    if missing:
        raise ConfigError(f"{name}: missing key(s): {', '.join(missing)}")
    # The file is generated by the build tool from the same source tree, so
    # an unknown key means a typo or a version mismatch, not an extension.
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s): {', '.join(unknown)}")

    for key, expected in _CONFIG_KEYS.items():
        value = data[key]
        # bool is a subclass of int, but "rate_limit_seconds": true is a bug.
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{name}: key {key!r} must be of type {expected.__name__}, not {type(value).__name__}")
        check, requirement = _CONFIG_VALUE_RULES[key]
        if not check(value):
            raise ConfigError(f"{name}: key {key!r} {requirement}: {value!r}")

    return Config(**{**data, "state_directory": Path(data["state_directory"])})


def _parse_address(address: str) -> Address | None:
    """Return the parsed addr-spec, or None if it is not a usable address."""
    # Non-ASCII would need SMTPUTF8; control characters could inject headers.
    # Spaces are fine inside a quoted local part, which pipe(8)'s "q" flag
    # produces; the parser below rejects them anywhere else.
    if not address.isascii() or any(ord(c) < 0x20 or c == "\x7f" for c in address):
        return None
    try:
        parsed = Address(addr_spec=address)
    # The header parser signals bad input with a variety of exception types
    # (HeaderParseError, defects, IndexError, ValueError...).
    except Exception:
        return None
    if not parsed.username or not parsed.domain:
        return None
    return parsed


def parse_message(data: bytes) -> Message:
    """Parse the headers of a raw message without ever raising.

    The compat32 policy keeps header values as the raw strings found in the
    message; the checks below do their own lenient interpretation instead of
    relying on the structured header parser, which can raise on garbage.
    """
    return BytesParser(policy=policy.compat32).parsebytes(data, headersonly=True)


def _header_values(message: Message, name: str) -> list[str]:
    wanted = name.lower()
    values = []
    for key, value in message.raw_items():
        if key.lower() == wanted:
            values.append(_unfold(str(value)))
    return values


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def _strip_comments(value: str) -> str:
    # Repeat so that nested comments such as "(a (b) c)" disappear too.
    previous = None
    while previous != value:
        previous = value
        value = re.sub(r"\([^()]*\)", " ", value)
    return value.strip()


def _automated_local_part(local: str) -> str | None:
    # With a recipient delimiter, list software often uses VERP addresses
    # such as "list-bounces+alice=example.org@lists.example.org".
    for candidate in sorted({local, local.split("+", 1)[0]}):
        if candidate in _EXACT_LOCAL_PARTS:
            return f"is {candidate!r}"
        for prefix in _LOCAL_PART_PREFIXES:
            if candidate.startswith(prefix):
                return f"matches '{prefix}*'"
        for suffix in _LOCAL_PART_SUFFIXES:
            if candidate.endswith(suffix):
                return f"matches '*{suffix}'"
    return None


def _sender_reason(sender: str, own_addresses: Sequence[str]) -> str | None:
    if not sender:
        return "null envelope sender"
    if sender.lower() == "mailer-daemon":
        return "envelope sender is MAILER-DAEMON"
    parsed = _parse_address(sender)
    if parsed is None:
        return f"unusable envelope sender address {sender!r}"
    automated = _automated_local_part(parsed.username.lower())
    if automated is not None:
        return f"envelope sender local part {automated}"
    if sender.lower() in {own.lower() for own in own_addresses if own}:
        return "envelope sender is the responder's own address"
    return None


def _header_reason(message: Message, own_address: str) -> str | None:
    for value in _header_values(message, "Auto-Submitted"):
        keyword = _strip_comments(value.split(";", 1)[0]).lower()
        if keyword != "no":
            return f"Auto-Submitted: {keyword or '(empty)'}"

    for name, _value in message.raw_items():
        if name.lower() in _LIST_HEADERS:
            return f"mailing list header {name}"

    for value in _header_values(message, "Precedence"):
        keyword = _strip_comments(value).lower()
        if keyword in _BULK_PRECEDENCES:
            return f"Precedence: {keyword}"

    for value in _header_values(message, "X-Auto-Response-Suppress"):
        tokens = {token.lower() for token in re.split(r"[\s,;]+", value) if token}
        suppressing = tokens & _SUPPRESSING_TOKENS
        if suppressing:
            return f"X-Auto-Response-Suppress: {', '.join(sorted(suppressing))}"

    own = own_address.lower()
    for value in _header_values(message, "X-Loop"):
        addresses = {address.lower() for _name, address in getaddresses([value])}
        if own in addresses or value.lower() == own:
            return "X-Loop contains the responder's own address"

    return None


def reason_not_to_reply(
    message: Message,
    sender: str,
    own_address: str,
    recipient: str = "",
) -> str | None:
    """Return why no reply must be sent, or None if a reply is acceptable.

    The rate limit is not checked here: it needs the state directory and a
    lock, see RateLimiter.
    """
    return _sender_reason(sender, (own_address, recipient)) or _header_reason(message, own_address)


def _message_ids(value: str) -> list[str]:
    return _MSG_ID_RE.findall(value)


def _fold_ids(name: str, ids: Sequence[str]) -> str:
    lines: list[str] = []
    current = ""
    width = len(name) + 2
    for msg_id in ids:
        if current and width + 1 + len(msg_id) > _HEADER_LINE_LENGTH:
            lines.append(current)
            current = msg_id
            width = 1 + len(msg_id)
        else:
            width += (1 if current else 0) + len(msg_id)
            current = f"{current} {msg_id}" if current else msg_id
    lines.append(current)
    return "\n ".join(lines)


def build_reply(message: Message, sender: str, config: Config, now: datetime) -> EmailMessage:
    """Build the auto-reply to ``message``, addressed to the envelope sender.

    ``sender`` must be an address accepted by reason_not_to_reply().
    """
    own = Address(addr_spec=config.from_address)
    reply = EmailMessage(policy=_REPLY_POLICY)
    reply["From"] = own
    reply["To"] = Address(addr_spec=sender)
    reply["Subject"] = config.subject
    reply["Date"] = format_datetime(now)
    reply["Message-ID"] = make_msgid(domain=own.domain)

    parent_ids = [found for value in _header_values(message, "Message-ID") for found in _message_ids(value)][:1]
    references = [found for value in _header_values(message, "References") for found in _message_ids(value)]
    if not references:
        # RFC 5322 section 3.6.4: fall back to a single-id In-Reply-To.
        in_reply_to = [found for value in _header_values(message, "In-Reply-To") for found in _message_ids(value)]
        if len(in_reply_to) == 1:
            references = in_reply_to
    references = [ref for ref in references if ref not in parent_ids] + parent_ids
    if len(references) > _MAX_REFERENCES:
        # Keep the thread root and the most recent ancestors, as MUAs do.
        references = references[:1] + references[-(_MAX_REFERENCES - 1) :]
    if parent_ids:
        reply.set_raw("In-Reply-To", parent_ids[0])
    if references:
        reply.set_raw("References", _fold_ids("References", references))

    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Loop"] = config.from_address
    # Microsoft Exchange consults this header before sending its own
    # automatic replies, which would otherwise answer ours.
    reply["X-Auto-Response-Suppress"] = "All"
    if config.body.isascii():
        reply.set_content(config.body, charset="utf-8")
    else:
        reply.set_content(config.body, charset="utf-8", cte="quoted-printable")
    return reply


def submit_reply(
    reply: EmailMessage,
    recipient: str,
    host: str,
    port: int,
    timeout: float | None = None,
) -> None:
    """Send ``reply`` to ``recipient`` by SMTP with a null envelope sender.

    Raises OSError (smtplib.SMTPException is a subclass) on any failure.
    """
    # Passing local_hostname avoids socket.getfqdn(), which may query DNS.
    local_hostname = socket.gethostname() or "localhost"
    if timeout is None:
        timeout = SMTP_TIMEOUT_SECONDS
    smtp = smtplib.SMTP(host, port, local_hostname=local_hostname, timeout=timeout)
    try:
        smtp.sendmail("", [recipient], reply.as_bytes())
    finally:
        # Once the message is accepted, a failing QUIT must not turn into a
        # deferral: Postfix would retry and the sender would get two replies.
        with contextlib.suppress(OSError):
            smtp.quit()
        smtp.close()


class Reservation:
    """An exclusive lock on one sender's state file.

    A state file whose size is zero only exists to carry the lock and does
    not count as a reply: the file is created before the decision, but the
    reply is recorded (content and mtime) only once it has been submitted.
    """

    def __init__(self, fd: int, path: Path, window_seconds: float, clock: Clock) -> None:
        self._fd = fd
        self._path = path
        self._window_seconds = window_seconds
        self._clock = clock
        stat = os.fstat(fd)
        self.last_reply: float | None = stat.st_mtime if stat.st_size > 0 else None
        self.recorded = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def limited(self) -> bool:
        """True if a reply was already sent within the rate window."""
        if self.last_reply is None:
            return False
        # abs() so that an mtime far in the future (clock jumped backwards)
        # does not silence a sender for longer than one window.
        return abs(self._clock() - self.last_reply) < self._window_seconds

    def record(self) -> None:
        """Remember that a reply was sent now."""
        now = self._clock()
        content = f"{int(now)}\n".encode("ascii")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, content, 0)
        os.utime(self._fd, (now, now))
        self.last_reply = now
        self.recorded = True

    def close(self) -> None:
        """Drop the lock, removing the file if it never recorded a reply."""
        # Errors are ignored: this runs after a reply may have been sent, and
        # a deferral at that point would send it again.
        with contextlib.suppress(OSError):
            if not self.recorded and os.fstat(self._fd).st_size == 0:
                # Still holding the lock: waiters notice the unlink through
                # the inode check in RateLimiter._open_locked() and retry.
                os.unlink(self._path)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class RateLimiter:
    """One state file per sender, named by the sha256 of the lower-cased
    address, whose mtime is the time of the last reply."""

    def __init__(
        self,
        state_directory: str | os.PathLike[str],
        window_seconds: float,
        *,
        clock: Clock = time.time,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        self.state_directory = Path(state_directory)
        self.window_seconds = window_seconds
        self.clock = clock
        self.lock_timeout = lock_timeout

    @staticmethod
    def key(sender: str) -> str:
        address = sender.lower().encode("utf-8", "surrogateescape")
        return hashlib.sha256(address).hexdigest()

    def state_path(self, sender: str) -> Path:
        return self.state_directory / self.key(sender)

    def last_reply(self, sender: str) -> float | None:
        """Time of the last recorded reply to ``sender`` (without locking)."""
        try:
            stat = os.stat(self.state_path(sender), follow_symlinks=False)
        except FileNotFoundError:
            return None
        return stat.st_mtime if stat.st_size > 0 else None

    @contextlib.contextmanager
    def reserve(self, sender: str) -> Iterator[Reservation]:
        """Lock the sender's state for the duration of the ``with`` block.

        Raises OSError (TimeoutError if the lock cannot be obtained in time)
        when the state directory is unusable.
        """
        path = self.state_path(sender)
        fd = self._open_locked(path)
        try:
            reservation = Reservation(fd, path, self.window_seconds, self.clock)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield reservation
        finally:
            reservation.close()

    def _open_locked(self, path: Path) -> int:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                self._lock(fd, deadline)
                opened = os.fstat(fd)
                try:
                    current = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    current = None
                if current is not None and (current.st_dev, current.st_ino) == (
                    opened.st_dev,
                    opened.st_ino,
                ):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            # The previous holder removed the file while we were waiting.
            os.close(fd)

    def _lock(self, fd: int, deadline: float) -> None:
        # Polling rather than a blocking flock() keeps the wait bounded.
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {self.lock_timeout:g}s waiting for a lock")
            time.sleep(_LOCK_POLL_SECONDS)


class _ArgumentParser(argparse.ArgumentParser):
    # argparse would call sys.exit(2); Postfix needs sysexits codes.
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise UsageError(message or "", status)


def _argument_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="responder",
        description="Send the Nos oignons donation auto-reply (pipe(8) helper).",
    )
    parser.add_argument("--config", required=True, help="JSON configuration file")
    parser.add_argument(
        "--sender",
        required=True,
        help="envelope sender (empty for the null sender)",
    )
    parser.add_argument("--recipient", default="", help="original envelope recipient (for logging)")
    return parser


def _glue_option_values(argv: Sequence[str]) -> list[str]:
    # Postfix passes addresses as separate argv words; an address starting
    # with "-" would otherwise be mistaken by argparse for an option.
    glued: list[str] = []
    words = iter(argv)
    for word in words:
        if word in ("--config", "--sender", "--recipient"):
            value = next(words, None)
            glued.append(word if value is None else f"{word}={value}")
        else:
            glued.append(word)
    return glued


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; raise UsageError if it is invalid."""
    return _argument_parser().parse_args(_glue_option_values(argv))


def _default_log(line: str) -> None:
    # pipe(8) discards the output of successful commands, so syslog is the
    # only place where "no reply because ..." remains visible; stderr ends up
    # in the Postfix defer/bounce reason for non-zero exits.
    sys.stderr.write(f"{PROGRAM}: {line}\n")
    sys.stderr.flush()
    syslog.openlog(PROGRAM, syslog.LOG_PID, syslog.LOG_MAIL)
    syslog.syslog(syslog.LOG_INFO, line)


def main(
    argv: Sequence[str] | None = None,
    stdin: BinaryIO | None = None,
    *,
    log: Log | None = None,
    clock: Clock = time.time,
) -> int:
    """Run the responder; return a sysexits(3) code for pipe(8)."""
    emit = _default_log if log is None else log
    try:
        return _run(
            sys.argv[1:] if argv is None else argv,
            sys.stdin.buffer if stdin is None else stdin,
            emit,
            clock,
        )
    except Exception as error:
        # A bug must not bounce the donor's message: defer it so that it can
        # be delivered once the responder is fixed.
        emit(f"internal error, deferring: {type(error).__name__}: {error}")
        return EX_TEMPFAIL


def _run(argv: Sequence[str], stdin: BinaryIO, log: Log, clock: Clock) -> int:
    try:
        arguments = parse_arguments(argv)
    except UsageError as error:
        if error.status != EX_OK:
            log(str(error))
            return EX_USAGE
        return EX_OK
    sender: str = arguments.sender.strip()
    recipient: str = arguments.recipient.strip()

    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        log(f"configuration error: {error}")
        return EX_CONFIG

    try:
        data = stdin.read()
    except OSError as error:
        log(f"cannot read the message, deferring: {error}")
        return EX_TEMPFAIL
    message = parse_message(data)

    reason = reason_not_to_reply(message, sender, config.from_address, recipient)
    if reason is not None:
        log(f"no reply to {sender or '<>'}: {reason}")
        return EX_OK
    return _reply_once(message, sender, config, log, clock)


def _reply_once(message: Message, sender: str, config: Config, log: Log, clock: Clock) -> int:
    """Reply unless the rate limit forbids it; return the exit code."""
    limiter = RateLimiter(config.state_directory, config.rate_limit_seconds, clock=clock)
    try:
        with limiter.reserve(sender) as reservation:
            if reservation.limited:
                log(f"no reply to {sender}: already replied within {config.rate_limit_seconds}s (rate limit)")
                return EX_OK
            now = datetime.fromtimestamp(clock(), UTC).astimezone()
            reply = build_reply(message, sender, config, now)
            try:
                submit_reply(reply, sender, config.smtp_host, config.smtp_port)
            except OSError as error:
                log(f"SMTP submission to {config.smtp_host}:{config.smtp_port} failed, deferring: {error}")
                return EX_TEMPFAIL
            try:
                reservation.record()
            except OSError as error:
                # The reply is gone: deferring would only send it twice.
                log(f"replied to {sender} but could not record it: {error}")
                return EX_OK
            log(f"replied to {sender} (message {reply['Message-ID']})")
            return EX_OK
    except OSError as error:
        log(f"state directory {config.state_directory} unusable, deferring: {error}")
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
