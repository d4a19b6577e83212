"""A raw SMTP client for the attacker tests: bytes exactly as given, every reply kept.

Run by the harness inside the outside-world namespace (`ip netns exec`), like
smtp_sink.py.  It reads a JSON session from stdin:

    {"host": "10.237.1.1", "port": 25, "source": null, "connections": 1,
     "steps": [["EHLO a.test\\r\\n", 1], ["DATA...", -1]]}

For each connection it reads the greeting, then for each step sends the
step's text (UTF-8, sent as is: bare LFs stay bare) and reads that many
replies; -1 reads replies until the server closes the connection or falls
silent.  It prints JSON: one list per connection of [step text, [replies]],
the greeting first (step text null).  A connection that fails shows its error
as a reply starting with "error:".
"""

from __future__ import annotations

import json
import socket
import sys

TIMEOUT_SECONDS = 20.0
SILENCE_SECONDS = 3.0


class Replies:
    """SMTP replies read from a socket, line by line (multi-line replies joined)."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def _line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = self.connection.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def one(self) -> str | None:
        lines: list[str] = []
        while True:
            line = self._line()
            if line is None:
                return "\n".join(lines) if lines else None
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)


def session(host: str, port: int, source: str | None, steps: list[tuple[str, int]]) -> list[list[object]]:
    transcript: list[list[object]] = []
    try:
        connection = socket.create_connection(
            (host, port), timeout=TIMEOUT_SECONDS, source_address=(source, 0) if source else None
        )
    except OSError as error:
        return [[None, [f"error: {error}"]]]
    with connection:
        replies = Replies(connection)
        try:
            transcript.append([None, [replies.one()]])
            for text, count in steps:
                connection.sendall(text.encode("utf-8"))
                got: list[str | None] = []
                if count < 0:
                    connection.settimeout(SILENCE_SECONDS)
                    try:
                        while (reply := replies.one()) is not None:
                            got.append(reply)
                    except TimeoutError:
                        pass
                    connection.settimeout(TIMEOUT_SECONDS)
                else:
                    got = [replies.one() for _ in range(count)]
                transcript.append([text, got])
        except OSError as error:
            transcript.append([None, [f"error: {error}"]])
    return transcript


def main() -> int:
    request = json.load(sys.stdin)
    steps = [(str(text), int(count)) for text, count in request["steps"]]
    results = [
        session(str(request["host"]), int(request["port"]), request.get("source"), steps)
        for _ in range(int(request.get("connections", 1)))
    ]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
