#!/usr/bin/python3
"""Donation auto-responder of an oignons-mail relay (its texts: the site's, in responder.json).

Installed as /usr/lib/oignons-mail-relay/responder and run by Postfix's
pipe(8) as the unprivileged user ``oignons-responder``::

    responder unix - n n - - pipe flags=Rq user=oignons-responder null_sender=
      argv=/usr/lib/oignons-mail-relay/responder
      --config /usr/share/oignons-mail-relay/responder.json
      --sender ${sender} --recipient ${original_recipient} --queue-id ${queue_id}

The incoming message is read from standard input (its header section only, up
to a size bound; the rest is drained unread).  A reply follows RFC 3834 and
the usual vacation(1) rules, and it is submitted by SMTP with a null envelope
sender so that any bounce of the reply is discarded instead of looping back.

Envelope senders are forged at will, so the reply must not become backscatter:

- at most one reply per sender and rate window, the sender's address taken
  without its "+extension" (a+1@x ... a+20@x are one sender);
- at most ``global_rate_limit`` replies per ``global_rate_window_seconds`` in all,
  whoever the senders are: the bound on what a flood of forged senders gets;
- no reply to the site's own domains (its lists and aliases), nor when
  rspamd's milter judged the message spam or found the sender's domain failing
  SPF, DKIM or DMARC.  Those verdicts are read from the headers rspamd adds
  (X-Spam-Status, X-Rspamd-Action, Authentication-Results), and only when the
  message also carries rspamd's X-Rspamd-Queue-Id equal to the Postfix queue
  ID that pipe(8) passes: a copy supplied by the sender cannot know it.  Without
  rspamd (or without that proof) only the two rate limits apply.

Whatever the message contains, it is handled in time linear in its size and
never makes the responder fail: hostile input is logged (escaped) and the
exit status is 0, so that Postfix never retries it nor bounces it to a forged
sender.

Exit codes follow sysexits(3) as interpreted by pipe(8): 0 when the message
was handled (whether or not a reply was sent), 75 (EX_TEMPFAIL) when Postfix
should retry later (the SMTP submission or the state directory failed), 78
(EX_CONFIG) for a bad configuration file (also retried by Postfix, giving the
administrator time to fix it) and 64 (EX_USAGE) for bad command-line arguments.
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
import secrets
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
from email.utils import format_datetime, make_msgid
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

# Only the header section is examined.  A legitimate message's headers are a
# few kilobytes (Postfix's header_size_limit caps one header at 100 KiB); a
# larger header section is hostile and gets no reply.  The body is drained in
# chunks of this size and dropped, so memory stays bounded too.
MAX_HEADER_BYTES = 1 << 20
_READ_CHUNK = 1 << 16
# Log lines quote parts of the message: cut them so that a hostile header
# does not fill the log.
_MAX_SHOWN = 200

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

# rspamd's milter_headers module (conffiles/rspamd-milter-headers.conf):
# X-Spam-Status is "Yes, score=..." for every action but these two.
_RSPAMD_HAM_ACTIONS = frozenset({"no action", "greylist"})
# Authentication-Results methods and results meaning that the sender's
# domain does not vouch for this message: the envelope sender is likely
# forged, and the reply would go to an innocent third party.
_FAILED_AUTHENTICATION = frozenset({("spf", "fail"), ("spf", "softfail"), ("dkim", "fail"), ("dmarc", "fail")})
_RESINFO_RE = re.compile(r"([A-Za-z0-9-]+)\s*=\s*([A-Za-z0-9-]+)")

# The reply is signed with the site's key (rspamd's default sign_headers
# include In-Reply-To and References): what it copies from a stranger's
# message is one msg-id of the shape MTAs and mail programs generate
# (dot-atom @ dot-atom, no spaces, at most _MAX_MSG_ID_LENGTH characters),
# enough to thread the reply, too little to carry a sentence under the
# association's signature.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_MSG_ID_RE = re.compile(rf"<{_DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
_MAX_MSG_ID_LENGTH = 100

# The msg-id is stored raw (set_raw), not refolded by the email package,
# which would turn a long one into RFC 2047 encoded words.
_REPLY_POLICY = policy.SMTP.clone(refold_source="none")

_CONFIG_KEYS: dict[str, type] = {
    "from_address": str,
    "subject": str,
    "body": str,
    "rate_limit_seconds": int,
    "global_rate_limit": int,
    "global_rate_window_seconds": int,
    "recipient_delimiter": str,
    "own_domains": list,
    "state_directory": str,
    "smtp_host": str,
    "smtp_port": int,
}

# The global limit's record, next to the per-sender files (named by a hex
# digest, so no sender can collide with it).
GLOBAL_STATE = "global"

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
    global_rate_limit: int
    global_rate_window_seconds: int
    recipient_delimiter: str
    own_domains: tuple[str, ...]
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
    # The site's rules (tests/unit/test_contract.py checks that both agree).
    "rate_limit_seconds": (lambda value: value >= 1, "must be at least 1"),
    "global_rate_limit": (lambda value: value >= 1, "must be at least 1"),
    "global_rate_window_seconds": (lambda value: value >= 1, "must be at least 1"),
    "recipient_delimiter": (
        lambda value: len(value) == 1 and not value.isalnum() and not value.isspace() and value not in "@.",
        "must be one punctuation character other than '@' and '.'",
    ),
    "own_domains": (
        lambda value: all(isinstance(domain, str) and domain and "@" not in domain for domain in value),
        "must be a list of domain names",
    ),
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

    return Config(
        **{
            **data,
            "own_domains": tuple(domain.lower() for domain in data["own_domains"]),
            "state_directory": Path(data["state_directory"]),
        }
    )


def _parse_address(address: str) -> Address | None:
    """Return the parsed addr-spec, or None if it is not a usable address."""
    # Non-ASCII would need SMTPUTF8; control characters could inject headers.
    # Spaces are fine inside a quoted local part, which pipe(8)'s "q" flag
    # produces; the parser below rejects them anywhere else.  An address is
    # at most 254 characters (RFC 5321 section 4.5.3.1.3), which also bounds
    # the parser's work.
    if len(address) > 254 or not address.isascii() or any(ord(c) < 0x20 or c == "\x7f" for c in address):
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


def read_header_section(stream: BinaryIO) -> bytes | None:
    """The message's header section (up to the empty line), or None if it
    exceeds MAX_HEADER_BYTES; the rest of the stream is read and dropped.

    Reading everything lets pipe(8) write the whole message without a broken
    pipe; each byte is looked at a bounded number of times.
    """
    collected = bytearray()
    end: int | None = None
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        if end is None and len(collected) <= MAX_HEADER_BYTES:
            # Only the new bytes (and three before them) can hold the separator.
            start = max(0, len(collected) - 3)
            collected += chunk
            found = [i for i in (collected.find(b"\n\n", start), collected.find(b"\n\r\n", start)) if i >= 0]
            if found:
                end = min(found) + 1
    if end is None:
        end = len(collected)
    if end > MAX_HEADER_BYTES:
        return None
    return bytes(collected[:end])


def parse_message(data: bytes) -> Message:
    """Parse the headers of a raw message without ever raising.

    The compat32 policy keeps header values as the raw strings found in the
    message (bytes that are not ASCII become surrogate escapes); the checks
    below do their own lenient interpretation instead of relying on the
    structured header parser, which can raise on garbage.
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
    # In a parsed header value every line break starts a continuation line
    # (or ends the value): removing them unfolds it.  str.replace is many
    # times faster than a regular expression on long hostile values.
    return value.replace("\r\n", "").replace("\n", "").strip()


# A run of characters without special meaning, a quoted pair, a run of "(" or
# of ")" (so that a hostile "((((..." is one token, not one per character), or
# a double quote.
_COMMENT_TOKEN_RE = re.compile(r'[^()\\"]+|\\.?|\(+|\)+|"', re.DOTALL)


def strip_comments(value: str) -> str:
    """``value`` without its RFC 5322 comments, nested ones included.

    One pass over the value: each comment becomes a space, a quoted string is
    kept as it is (parentheses inside it are not comments), a quoted pair is
    kept verbatim, an unbalanced ")" is kept and an unclosed "(" runs to the
    end.
    """
    kept: list[str] = []
    depth = 0
    quoted = False
    for match in _COMMENT_TOKEN_RE.finditer(value):
        piece = match.group()
        if depth:
            if piece[0] == "(":
                depth += len(piece)
            elif piece[0] == ")":
                closing = min(len(piece), depth)
                depth -= closing
                if not depth:
                    # The comment ends; any further ")" are stray ones.
                    kept.append(" " + piece[closing:])
        elif quoted:
            kept.append(piece)
            quoted = piece != '"'
        elif piece[0] == "(":
            depth = len(piece)
        else:
            kept.append(piece)
            quoted = piece == '"'
    return "".join(kept).strip()


def _shown(value: str) -> str:
    """A part of the message as quoted in a log line (the line is escaped later)."""
    return value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + f"... ({len(value)} characters)"


def loggable(line: str) -> str:
    """``line`` in printable ASCII: non-ASCII, undecodable bytes (surrogate
    escapes) and control characters become backslash escapes, so that no
    message can break the syslog call or forge log lines."""
    return line.encode("unicode_escape").decode("ascii")


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


def _sender_reason(sender: str, own_addresses: Sequence[str], own_domains: Sequence[str]) -> str | None:
    if not sender:
        return "null envelope sender"
    if sender.lower() == "mailer-daemon":
        return "envelope sender is MAILER-DAEMON"
    parsed = _parse_address(sender)
    if parsed is None:
        return f"unusable envelope sender address {_shown(sender)!r}"
    automated = _automated_local_part(parsed.username.lower())
    if automated is not None:
        return f"envelope sender local part {automated}"
    return _own_sender_reason(sender, parsed.domain.lower(), own_addresses, own_domains)


def _own_sender_reason(
    sender: str, domain: str, own_addresses: Sequence[str], own_domains: Sequence[str]
) -> str | None:
    if sender.lower() in {own.lower() for own in own_addresses if own}:
        return "envelope sender is the responder's own address"
    if domain in own_domains:
        # Every address there is one of the site's aliases or lists.
        return f"envelope sender is in the site's own domain {domain} (its lists and aliases)"
    return None


def _header_reason(message: Message, own_address: str) -> str | None:
    for value in _header_values(message, "Auto-Submitted"):
        keyword = strip_comments(value.split(";", 1)[0]).lower()
        if keyword != "no":
            return f"Auto-Submitted: {_shown(keyword) or '(empty)'}"

    for name, _value in message.raw_items():
        if name.lower() in _LIST_HEADERS:
            return f"mailing list header {_shown(name)}"

    for value in _header_values(message, "Precedence"):
        keyword = strip_comments(value).lower()
        if keyword in _BULK_PRECEDENCES:
            return f"Precedence: {keyword}"

    for value in _header_values(message, "X-Auto-Response-Suppress"):
        tokens = {token.lower() for token in re.split(r"[\s,;]+", value) if token}
        suppressing = tokens & _SUPPRESSING_TOKENS
        if suppressing:
            return f"X-Auto-Response-Suppress: {', '.join(sorted(suppressing))}"

    own = own_address.lower()
    for value in _header_values(message, "X-Loop"):
        # X-Loop carries an address, perhaps in angle brackets or with a comment.
        if own in re.split(r"[\s<>,;]+", strip_comments(value).lower()):
            return "X-Loop contains the responder's own address"

    return None


def rspamd_reason(message: Message, queue_id: str) -> str | None:
    """Why rspamd's verdict forbids a reply, or None (also when there is no
    trustworthy verdict: without rspamd, only the rate limits apply).

    The verdict is trusted only if rspamd's X-Rspamd-Queue-Id equals the
    Postfix queue ID of this delivery.  rspamd's milter also removes every
    incoming copy of the headers it adds (remove = 0 in its configuration), so
    a sender cannot supply the verdict while rspamd runs, and while it does
    not, a copy supplied by the sender lacks the queue ID.

    One header needs no proof: X-Spam: Yes, which rspamd's proxy adds for
    every spam action, also when a pre-result ends the scan before
    milter_headers runs (a GTUBE-like pattern, a prefilter's verdict: no
    X-Spam-Status, no queue ID then).  A sender's own copy can only silence
    the reply to itself, never cause one.
    """
    trusted = _trusted_rspamd_reason(message, queue_id)
    if trusted:
        return trusted
    if any(strip_comments(value).lower() == "yes" for value in _header_values(message, "X-Spam")):
        return "rspamd says spam (X-Spam: Yes)"
    return None


def _trusted_rspamd_reason(message: Message, queue_id: str) -> str | None:
    """The verdict of rspamd's milter_headers, if X-Rspamd-Queue-Id proves it is rspamd's."""
    if not queue_id or queue_id not in (strip_comments(v) for v in _header_values(message, "X-Rspamd-Queue-Id")):
        return None
    for value in _header_values(message, "X-Spam-Status"):
        if value.split(",", 1)[0].strip().lower() == "yes":
            return f"rspamd says spam (X-Spam-Status: {_shown(value)})"
    for value in _header_values(message, "X-Rspamd-Action"):
        if value.lower() not in _RSPAMD_HAM_ACTIONS:
            return f"rspamd says spam (X-Rspamd-Action: {_shown(value)})"
    for value in _header_values(message, "Authentication-Results"):
        # authserv-id; method=result (comment) property=value; ...
        for resinfo in strip_comments(value).split(";")[1:]:
            match = _RESINFO_RE.match(resinfo.strip())
            if match and (match[1].lower(), match[2].lower()) in _FAILED_AUTHENTICATION:
                return f"rspamd: the sender's domain fails {match[1].lower()} ({match[1].lower()}={match[2].lower()})"
    return None


def reason_not_to_reply(
    message: Message,
    sender: str,
    own_address: str,
    recipient: str = "",
    *,
    own_domains: Sequence[str] = (),
    queue_id: str = "",
) -> str | None:
    """Return why no reply must be sent, or None if a reply is acceptable.

    The rate limits are not checked here: they need the state directory and
    locks, see RateLimiter and GlobalLimit.
    """
    return (
        _sender_reason(sender, (own_address, recipient), own_domains)
        or _header_reason(message, own_address)
        or rspamd_reason(message, queue_id)
    )


def rate_limit_key(sender: str, delimiter: str) -> str:
    """The address that the per-sender limit counts: lower case, without the
    "+extension" (Postfix's recipient_delimiter), so that a+1@x ... a+20@x,
    all delivered to one mailbox, get one reply between them."""
    local, _, domain = sender.lower().rpartition("@")
    for character in delimiter:
        local = local.split(character, 1)[0]
    return f"{local}@{domain}" if local else sender.lower()


def _parent_message_id(message: Message) -> str | None:
    """The message's own msg-id, if its Message-ID field is one msg-id of the accepted shape."""
    values = _header_values(message, "Message-ID")
    if len(values) != 1:
        return None
    value = values[0].strip()
    if len(value) > _MAX_MSG_ID_LENGTH or not _MSG_ID_RE.fullmatch(value):
        return None
    return value


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

    # RFC 3834 section 3.1.5: In-Reply-To names the message answered; the
    # stranger's References chain is not copied (docs/open-internet.md).
    parent = _parent_message_id(message)
    if parent is not None:
        reply.set_raw("In-Reply-To", parent)
        reply.set_raw("References", parent)

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


def _lock(fd: int, deadline: float, timeout: float) -> None:
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
            raise TimeoutError(f"timed out after {timeout:g}s waiting for a lock")
        time.sleep(_LOCK_POLL_SECONDS)


def _open_locked(path: Path, timeout: float) -> int:
    """Open ``path`` (created if missing) and lock it exclusively; the fd."""
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd, deadline, timeout)
            if _is_current(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removed the file while we were waiting.
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked meanwhile)."""
    opened = os.fstat(fd)
    try:
        current = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


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
                # the inode check in _open_locked() and retry.
                os.unlink(self._path)
        with contextlib.suppress(OSError):
            os.close(self._fd)


_STATE_NAME_RE = re.compile(r"[0-9a-f]{64}")


class RateLimiter:
    """One state file per sender, named by the sha256 of its rate-limit key
    (rate_limit_key()), whose mtime is the time of the last reply."""

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
        fd = _open_locked(path, self.lock_timeout)
        try:
            reservation = Reservation(fd, path, self.window_seconds, self.clock)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield reservation
        finally:
            reservation.close()

    def prune(self) -> int:
        """Remove the state files older than the window; how many went.

        A file locked by a running responder is skipped (it is in use), and
        the age is checked again under the lock, so that a reply recorded
        meanwhile is never lost.  The directory then holds at most the
        senders answered within one window, which the global limit bounds.
        """
        removed = 0
        now = self.clock()
        for entry in os.scandir(self.state_directory):
            if not _STATE_NAME_RE.fullmatch(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if abs(now - entry.stat(follow_symlinks=False).st_mtime) < self.window_seconds:
                    continue
                removed += self._remove_if_stale(Path(entry.path), now)
        return removed

    def _remove_if_stale(self, path: Path, now: float) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0
            if not _is_current(fd, path) or abs(now - os.fstat(fd).st_mtime) < self.window_seconds:
                return 0
            os.unlink(path)
            return 1
        finally:
            os.close(fd)


class GlobalLimit:
    """At most ``limit`` replies per ``window_seconds``, all senders together.

    The record is one file: a line "<time> <token>" per reply within the
    window, rewritten (older lines dropped) under an exclusive lock each time
    a reply is counted, so it never holds more than ``limit`` lines.
    """

    def __init__(
        self,
        state_directory: str | os.PathLike[str],
        limit: int,
        window_seconds: float,
        *,
        clock: Clock = time.time,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        self.path = Path(state_directory) / GLOBAL_STATE
        self.limit = limit
        self.window_seconds = window_seconds
        self.clock = clock
        self.lock_timeout = lock_timeout

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, list[tuple[float, str]]]]:
        fd = _open_locked(self.path, self.lock_timeout)
        try:
            yield fd, self._recent(fd)
        finally:
            os.close(fd)

    def _recent(self, fd: int) -> list[tuple[float, str]]:
        now = self.clock()
        size = os.fstat(fd).st_size
        # At most `limit` lines of ~40 bytes are ever written; more is damage.
        text = os.pread(fd, min(size, 64 * (self.limit + 1)), 0).decode("ascii", "replace")
        recent = []
        for line in text.splitlines():
            stamp, _, token = line.partition(" ")
            with contextlib.suppress(ValueError):
                # abs(): a clock that jumped backwards frees the slots after one window.
                if abs(now - float(stamp)) < self.window_seconds:
                    recent.append((float(stamp), token))
        return recent

    @staticmethod
    def _write(fd: int, entries: list[tuple[float, str]]) -> None:
        content = "".join(f"{stamp:.0f} {token}\n" for stamp, token in entries).encode("ascii")
        os.ftruncate(fd, 0)
        os.pwrite(fd, content, 0)

    def take(self) -> str | None:
        """Count one reply now; its token (for give_back()), or None when
        ``limit`` replies were already sent within the window."""
        with self._locked() as (fd, recent):
            if len(recent) >= self.limit:
                return None
            token = f"{os.getpid()}-{secrets.token_hex(4)}"
            self._write(fd, [*recent, (self.clock(), token)])
            return token

    def give_back(self, token: str) -> None:
        """Uncount a reply that could not be sent after all."""
        with self._locked() as (fd, recent):
            self._write(fd, [entry for entry in recent if entry[1] != token])


class _ArgumentParser(argparse.ArgumentParser):
    # argparse would call sys.exit(2); Postfix needs sysexits codes.
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise UsageError(message or "", status)


_OPTIONS_WITH_VALUES = ("--config", "--sender", "--recipient", "--queue-id")


def _argument_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="responder",
        description="Send this relay's donation auto-reply, with the texts of its site (--config) (pipe(8) helper).",
    )
    parser.add_argument("--config", required=True, help="JSON configuration file")
    parser.add_argument(
        "--sender",
        required=True,
        help="envelope sender (empty for the null sender)",
    )
    parser.add_argument("--recipient", default="", help="original envelope recipient (for logging)")
    parser.add_argument(
        "--queue-id",
        default="",
        help="Postfix queue ID; rspamd's verdict is trusted only if it names this ID",
    )
    return parser


def _glue_option_values(argv: Sequence[str]) -> list[str]:
    # Postfix passes addresses as separate argv words; an address starting
    # with "-" would otherwise be mistaken by argparse for an option.
    glued: list[str] = []
    words = iter(argv)
    for word in words:
        if word in _OPTIONS_WITH_VALUES:
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
    sink = _default_log if log is None else log

    def emit(line: str) -> None:
        sink(loggable(line))

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
        emit(f"internal error, deferring: {type(error).__name__}: {_shown(str(error))}")
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
    queue_id: str = arguments.queue_id.strip()
    if queue_id:
        # Like Postfix's own lines, so that one grep finds the whole story.
        log = _prefixed(log, f"{queue_id}: ")

    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        log(f"configuration error: {error}")
        return EX_CONFIG

    try:
        message, reason = _decide(stdin, config, sender, recipient, queue_id)
    except OSError as error:
        log(f"cannot read the message, deferring: {error}")
        return EX_TEMPFAIL
    if message is None or reason is not None:
        log(f"no reply to {sender or '<>'}: {reason}")
        return EX_OK
    return _reply_once(message, sender, config, log, clock)


def _prefixed(log: Log, prefix: str) -> Log:
    def prefixed_log(line: str) -> None:
        log(prefix + line)

    return prefixed_log


def _decide(
    stdin: BinaryIO, config: Config, sender: str, recipient: str, queue_id: str
) -> tuple[Message | None, str | None]:
    """Read the message; it (None if unusable) and why not to reply (None
    if a reply may go).

    Raises OSError if standard input cannot be read.
    """
    header_section = read_header_section(stdin)
    if header_section is None:
        return None, f"header section larger than {MAX_HEADER_BYTES} bytes"
    try:
        message = parse_message(header_section)
        reason = reason_not_to_reply(
            message, sender, config.from_address, recipient, own_domains=config.own_domains, queue_id=queue_id
        )
    # Whatever the message holds, the decision is "no reply", never a
    # deferral that Postfix would end up bouncing to a (forged) sender.
    except Exception as error:
        return None, f"cannot interpret the message ({type(error).__name__}: {_shown(str(error))})"
    return message, reason


def _reply_once(message: Message, sender: str, config: Config, log: Log, clock: Clock) -> int:
    """Reply unless a rate limit forbids it; return the exit code."""
    key = rate_limit_key(sender, config.recipient_delimiter)
    limiter = RateLimiter(config.state_directory, config.rate_limit_seconds, clock=clock)
    global_limit = GlobalLimit(
        config.state_directory, config.global_rate_limit, config.global_rate_window_seconds, clock=clock
    )
    try:
        with limiter.reserve(key) as reservation:
            if reservation.limited:
                log(
                    f"no reply to {sender}: already replied to {key} within {config.rate_limit_seconds}s"
                    " (per-sender rate limit)"
                )
                return EX_OK
            token = global_limit.take()
            if token is None:
                log(
                    f"no reply to {sender}: {config.global_rate_limit} replies already sent within"
                    f" {config.global_rate_window_seconds}s (global rate limit)"
                )
                return EX_OK
            now = datetime.fromtimestamp(clock(), UTC).astimezone()
            reply = build_reply(message, sender, config, now)
            try:
                submit_reply(reply, sender, config.smtp_host, config.smtp_port)
            except OSError as error:
                log(f"SMTP submission to {config.smtp_host}:{config.smtp_port} failed, deferring: {error}")
                with contextlib.suppress(OSError):
                    global_limit.give_back(token)
                return EX_TEMPFAIL
            try:
                reservation.record()
            except OSError as error:
                # The reply is gone: deferring would only send it twice.
                log(f"replied to {sender} but could not record it: {error}")
                return EX_OK
            log(f"replied to {sender} (message {reply['Message-ID']})")
    except OSError as error:
        log(f"state directory {config.state_directory} unusable, deferring: {error}")
        return EX_TEMPFAIL
    try:
        limiter.prune()
    except OSError as error:
        log(f"could not prune the state directory {config.state_directory}: {error}")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
