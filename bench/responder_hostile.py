"""The donation responder on hostile messages: prints figures, asserts nothing.  `make bench`
(PYTHONPATH: the repository).

For each kind of hostile header, the time the responder spends on the message
(reading it, parsing its headers, deciding, building the reply: everything
that depends on what the message contains; no SMTP) at several sizes, and the
ratio of the largest to the smallest time against the ratio of the sizes.
Time linear in the size of the message gives a ratio near the size ratio
(10 for 400 KB against 40 KB); the quadratic comment stripping of older
versions gave about 100.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.responder_script import load_responder

SIZES_KB = (40, 100, 400)
# The best of several runs (at least RUNS, and for at least MIN_SECONDS): the
# other load of a shared machine only ever adds time.
RUNS = 7
MIN_SECONDS = 0.5
BASE = (
    b"From: <alice@example.org>\r\nTo: dons@nos-oignons.net\r\nSubject: don\r\n"
    b"Message-ID: <1@example.org>\r\nDate: Mon, 25 Nov 2024 10:00:00 +0100\r\n"
)


def message(headers: bytes) -> bytes:
    return BASE + headers + b"\r\n\r\nBonjour\r\n"


# Each builds a message whose hostile part is about `size` bytes.
HOSTILE: dict[str, Callable[[int], bytes]] = {
    "nested comments (Auto-Submitted)": lambda size: message(
        b"Auto-Submitted: " + b"(" * (size // 2) + b")" * (size // 2) + b" auto-replied"
    ),
    "nested comments, one per character pair": lambda size: message(
        b"Auto-Submitted: " + b"(a" * (size // 4) + b")" * (size // 4) + b" auto-replied"
    ),
    "unclosed comments (Precedence)": lambda size: message(b"Precedence: " + b"(" * size),
    "nested comments (X-Loop)": lambda size: message(b"X-Loop: " + b"(" * (size // 2) + b")" * (size // 2)),
    "angle brackets (References)": lambda size: message(b"References: " + b"<" * size),
    "one long header": lambda size: message(b"X-Long: " + b"x" * size),
    "many short headers": lambda size: message(b"".join(b"X-H%d: y\r\n" % i for i in range(size // 10))[:-2]),
    "continuation lines": lambda size: message(b"Subject: a" + b"\r\n b" * (size // 4)),
    "non-UTF-8 bytes": lambda size: message(b"Auto-Submitted: auto-r\xe9plied\xff" + b"\xff" * size),
    "garbage body (malformed MIME)": lambda size: (
        message(b"Content-Type: multipart/mixed") + bytes(range(256)) * (size // 256)
    ),
}


def main() -> int:
    responder = load_responder()
    with tempfile.TemporaryDirectory() as state:
        config = responder.Config(
            from_address="dons@nos-oignons.net",
            subject="Dons",
            body="IBAN FR14 2004 1010 0505 0001 3M02 606\n",
            rate_limit_seconds=604800,
            global_rate_limit=20,
            global_rate_window_seconds=3600,
            recipient_delimiter="+",
            own_domains=("nos-oignons.net",),
            state_directory=Path(state),
            smtp_host="127.0.0.1",
            smtp_port=25,
        )
        now = datetime.now(UTC)

        def handle(raw: bytes) -> str:
            headers = responder.read_header_section(io.BytesIO(raw))
            if headers is None:
                return "too large"
            parsed = responder.parse_message(headers)
            reason = responder.reason_not_to_reply(parsed, "alice@example.org", config.from_address)
            if reason is None:
                responder.build_reply(parsed, "alice@example.org", config, now).as_bytes()
                return "reply"
            return "no reply"

        sizes = "".join(f"{size:>7} KB" for size in SIZES_KB)
        title = f"responder, hostile messages (best of >= {RUNS} runs, ms)"
        print(f"{title:<56}{sizes}   ratio {SIZES_KB[-1]}/{SIZES_KB[0]} KB")
        worst = 0.0
        for name, build in HOSTILE.items():
            bests = []
            for size in SIZES_KB:
                raw = build(size * 1000)
                durations: list[float] = []
                while len(durations) < RUNS or sum(durations) < MIN_SECONDS:
                    start = time.perf_counter()
                    decision = handle(raw)
                    durations.append(time.perf_counter() - start)
                bests.append(min(durations))
            ratio = bests[-1] / bests[0]
            worst = max(worst, ratio)
            figures = "".join(f"{m * 1000:10.1f}" for m in bests)
            print(f"  {name:<52}{figures}   {ratio:5.1f}  ({decision})")
        linear = SIZES_KB[-1] / SIZES_KB[0]
        verdict = "linear" if worst < 2 * linear else "NOT linear"
        # A loaded machine inflates the larger runs most: say how loaded it was.
        print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"  worst ratio {worst:.1f} for {linear:.0f}x the size: {verdict} (quadratic would be ~{linear**2:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
