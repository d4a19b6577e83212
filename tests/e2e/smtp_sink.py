"""A tiny SMTP sink standing for "the rest of the Internet" in the end-to-end tests.

Run by the harness inside the test network's outside namespace:

    ip netns exec NS python3 smtp_sink.py --listen 10.237.1.2 --spool DIR

It accepts every message for every recipient and writes each one to
DIR/<time>-<n>.json ({"peer", "helo", "mail_from", "rcpt_to", "data"}); the
tests read that folder (each record also says whether the session used TLS).
With --tls-cert and --tls-key it offers STARTTLS with that certificate (the
DANE cases publish its key in TLSA); without, none, like many small MXs.  It
stops when killed; every connection times out after a minute.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

CONNECTION_TIMEOUT_SECONDS = 60
MAX_LINE = 65536


class SinkServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], spool: Path, name: str, tls: ssl.SSLContext | None) -> None:
        super().__init__(address, SinkHandler)
        self.spool = spool
        self.name = name
        self.tls = tls
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    def store(self, record: dict[str, object]) -> Path:
        with self.lock:
            number = next(self.counter)
        path = self.spool / f"{time.time():.6f}-{number:05d}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(record), encoding="utf-8")
        os.replace(partial, path)  # readers never see half a message
        return path


class SinkHandler(socketserver.StreamRequestHandler):
    server: SinkServer
    timeout = CONNECTION_TIMEOUT_SECONDS

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode("ascii"))
        self.wfile.flush()

    def handle(self) -> None:
        self.helo = ""
        self.tls_version = ""
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.reply(f"220 {self.server.name} ESMTP test sink")
        commands: dict[str, Callable[[str], object]] = {
            "EHLO": self.ehlo,
            "HELO": self.ehlo,
            "MAIL": self.mail,
            "RCPT": self.rcpt,
            "DATA": self.data,
            "RSET": self.rset,
            "NOOP": self.noop,
            "STAR": self.starttls,
        }
        while True:
            raw = self.rfile.readline(MAX_LINE)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            command = commands.get(verb)
            if command is None:
                self.reply("502 5.5.2 Command not recognized")
            elif command(line) is False:
                return  # the client went away during DATA

    def ehlo(self, line: str) -> None:
        self.helo = line[5:].strip()
        self.rset(line, quiet=True)
        if line[:4].upper() == "HELO":
            self.reply(f"250 {self.server.name}")
            return
        self.reply(f"250-{self.server.name}")
        if self.server.tls is not None and not self.tls_version:
            self.reply("250-STARTTLS")
        self.reply("250-8BITMIME")
        self.reply("250 SMTPUTF8")

    def starttls(self, line: str) -> bool:
        if self.server.tls is None or self.tls_version:
            self.reply("502 5.5.2 Command not recognized")
            return True
        self.reply("220 2.0.0 Ready to start TLS")
        try:
            connection = self.server.tls.wrap_socket(self.request, server_side=True)
        except (OSError, ssl.SSLError):
            return False  # e.g. a client that rejects the certificate (a DANE mismatch)
        self.request = connection
        self.rfile = connection.makefile("rb")
        self.wfile = connection.makefile("wb")
        self.tls_version = connection.version() or "TLS"
        self.helo, self.mail_from, self.rcpt_to = "", None, []
        return True

    def noop(self, line: str) -> None:
        self.reply("250 2.0.0 Ok")

    def mail(self, line: str) -> None:
        self.mail_from, self.rcpt_to = _address(line), []
        self.reply("250 2.1.0 Ok")

    def rcpt(self, line: str) -> None:
        if self.mail_from is None:
            self.reply("503 5.5.1 MAIL first")
            return
        self.rcpt_to.append(_address(line))
        self.reply("250 2.1.5 Ok")

    def rset(self, line: str, quiet: bool = False) -> None:
        self.mail_from, self.rcpt_to = None, []
        if not quiet:
            self.reply("250 2.0.0 Ok")

    def data(self, line: str) -> bool:
        if not self.rcpt_to or self.mail_from is None:
            self.reply("503 5.5.1 RCPT first")
            return True
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        data = self.read_data()
        if data is None:
            return False
        record = {"peer": self.client_address[0], "helo": self.helo, "mail_from": self.mail_from,
                  "rcpt_to": self.rcpt_to, "data": data, "tls": self.tls_version}  # fmt: skip
        self.server.store(record)
        self.reply("250 2.0.0 Ok: stored")
        self.rset(line, quiet=True)
        return True

    def read_data(self) -> str | None:
        lines: list[str] = []
        while True:
            raw = self.rfile.readline(MAX_LINE)
            if not raw:
                return None
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line == ".":
                return "\n".join(lines) + "\n"
            lines.append(line[1:] if line.startswith(".") else line)


def _address(line: str) -> str:
    """The address between < and > of a MAIL FROM or RCPT TO command ("" for <>)."""
    start, end = line.find("<"), line.find(">")
    return line[start + 1 : end] if 0 <= start < end else line.partition(":")[2].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="address to listen on")
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--spool", type=Path, required=True, help="folder for the received messages")
    parser.add_argument("--name", default="mx.elsewhere.test", help="host name in the greeting")
    parser.add_argument("--tls-cert", type=Path, help="offer STARTTLS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="and this key (PEM)")
    args = parser.parse_args()
    args.spool.mkdir(parents=True, exist_ok=True)
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    with SinkServer((args.listen, args.port), args.spool, args.name, tls) as server:
        (args.spool / "ready").touch()
        server.serve_forever()


if __name__ == "__main__":
    main()
