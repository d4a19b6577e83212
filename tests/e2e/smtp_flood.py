"""Idle SMTP connections for the connection-flood case: held open, never a command.

Run by the harness inside the outside-world namespace (`ip netns exec`).
Arguments: HOST PORT CONNECTIONS_PER_SOURCE SOURCE... It opens the
connections one by one (each waits at most 5 s for the greeting), prints one
JSON line {"greeted": n, "refused": n, "failed": n} once all are tried, and
holds the open ones without a word until its standard input closes.
"""

from __future__ import annotations

import json
import socket
import sys

GREETING_TIMEOUT_SECONDS = 5.0


def main() -> int:
    host, port, per_source, *sources = sys.argv[1:]
    held: list[socket.socket] = []
    counts = {"greeted": 0, "refused": 0, "failed": 0}
    for source in sources:
        for _ in range(int(per_source)):
            try:
                connection = socket.create_connection(
                    (host, int(port)), timeout=GREETING_TIMEOUT_SECONDS, source_address=(source, 0)
                )
                greeting = connection.recv(512)
            except OSError:
                counts["failed"] += 1
                continue
            if greeting.startswith(b"220"):
                counts["greeted"] += 1
                held.append(connection)
            else:
                counts["refused"] += 1
                connection.close()
    print(json.dumps(counts), flush=True)
    sys.stdin.read()
    for connection in held:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
