"""Mailman 3 and the relay, installed in either order, then Mailman removed.

Each release, each order, on a standard system (Postfix over exim4):
mailman3 from the archive and our relay package, one after the other; a list
created afterwards with `mailman create`; then mailman3 purged.  The relay's
Postfix answers real SMTP (in a network namespace of its own, so that nothing
listens on the host): the list's address is accepted while Mailman is there,
the relay's other addresses always are, and nothing answers "temporary lookup
failure" because a table is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import configured_postfix, copy_package, main_cf, package_file
from tests.system.debian_system import RELEASES, DebianSystem

PACKAGE = "oignons-mail-relay"
MAILMAN_TABLE = "hash:/var/lib/mailman3/data/postfix_lmtp"
LIST_ADDRESS = "test@nos-oignons.org"
ALIAS_ADDRESS = "postmaster@nos-oignons.org"  # one of the site's aliases
UNKNOWN_ADDRESS = "nobody-here@nos-oignons.org"
ORDERS = ("mailman3-first", "relay-first")

# Postfix started in a network namespace of its own (loopback brought up with
# SIOCSIFFLAGS: iproute2 is not in the base system); Python's smtplib asks it
# about each address and prints the RCPT reply code, then sends one message
# to the relay's alias and prints the DATA reply code.  Postfix dies with the
# command's PID namespace.
SMTP_PROBE = r"""
import fcntl, smtplib, socket, struct, subprocess, sys, time
IFF_UP, IFF_LOOPBACK, IFF_RUNNING, SIOCSIFFLAGS = 0x1, 0x8, 0x40, 0x8914
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
subprocess.run(["postfix", "start"], check=True)
deadline = time.monotonic() + 60
while True:
    try:
        client = smtplib.SMTP("127.0.0.1", 25, timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
client.ehlo("probe.elsewhere.test")
client.mail("probe@elsewhere.test")
for address in sys.argv[2:]:
    code, text = client.rcpt(address)
    print("RCPT", address, code, text.decode(errors="replace").replace("\n", " "))
client.rset()
client.mail("probe@elsewhere.test")
client.rcpt(sys.argv[1])
code, text = client.data(b"Subject: probe\r\n\r\nprobe\r\n")
print("DATA", sys.argv[1], code, text.decode(errors="replace").replace("\n", " "))
client.quit()
"""


@dataclass(frozen=True)
class SmtpAnswers:
    rcpt: dict[str, int]
    data: int
    transcript: str


@dataclass(frozen=True)
class Order:
    release: str
    order: str
    installed: dict[str, str]  # postconf -n with both packages and a list
    check: str  # `postfix check` output (stdout + stderr) at that point
    with_mailman: SmtpAnswers
    after_purge: dict[str, str]
    check_after_purge: str
    without_mailman: SmtpAnswers


def settings(system: DebianSystem) -> dict[str, str]:
    return main_cf(system.run("postconf -n").check("postconf -n").stdout)


def postfix_check(system: DebianSystem) -> str:
    result = system.run("postfix check 2>&1").check("postfix check")
    return result.stdout + result.stderr


def smtp_answers(system: DebianSystem) -> SmtpAnswers:
    (system.root / "root/smtp-probe.py").write_text(SMTP_PROBE, encoding="utf-8")
    result = system.run(
        f"unshare --net python3 /root/smtp-probe.py {ALIAS_ADDRESS} {ALIAS_ADDRESS} {LIST_ADDRESS} {UNKNOWN_ADDRESS}",
        timeout=180,
    ).check("SMTP probe")
    rcpt, data = {}, 0
    for line in result.stdout.splitlines():
        verb, address, code, *_ = line.split(" ", 3)
        if verb == "RCPT":
            rcpt[address] = int(code)
        elif verb == "DATA":
            data = int(code)
    return SmtpAnswers(rcpt, data, result.stdout + result.stderr)


@pytest.fixture(scope="module", params=[(r, o) for r in RELEASES for o in ORDERS], ids=lambda p: f"{p[0]}-{p[1]}")
def order(request: pytest.FixtureRequest, dist: Path) -> Iterator[Order]:
    release, order_name = request.param
    with configured_postfix(release, "") as system:
        deb = copy_package(system, package_file(dist, PACKAGE))
        install_relay = f"apt-get install -y -q --no-install-recommends {deb}"
        install_mailman = "apt-get install -y -q --no-install-recommends mailman3"
        steps = [install_mailman, install_relay] if order_name == "mailman3-first" else [install_relay, install_mailman]
        for step in steps:
            system.run(step, timeout=900).check(f"{step} ({order_name}, {release})")
        # Mailman refuses to run as root; its own user creates the list (and
        # the domain) while no Mailman daemon runs, as on a fresh host.
        system.run(f"runuser -u list -- mailman create {LIST_ADDRESS}", timeout=300).check("mailman create")
        installed, check = settings(system), postfix_check(system)
        with_mailman = smtp_answers(system)
        system.run("apt-get purge -y -q mailman3", timeout=600).check("apt-get purge mailman3")
        yield Order(
            release,
            order_name,
            installed,
            check,
            with_mailman,
            settings(system),
            postfix_check(system),
            smtp_answers(system),
        )


def test_postfix_uses_mailmans_table(order: Order) -> None:
    for key in ("transport_maps", "local_recipient_maps"):
        assert order.installed[key].endswith(f", {MAILMAN_TABLE}"), order.installed[key]


def test_postfix_check_is_clean(order: Order) -> None:
    assert order.check == ""
    assert order.check_after_purge == ""


def test_a_list_created_afterwards_is_a_known_recipient(order: Order) -> None:
    answers = order.with_mailman
    assert answers.rcpt == {ALIAS_ADDRESS: 250, LIST_ADDRESS: 250, UNKNOWN_ADDRESS: 550}, answers.transcript
    assert answers.data == 250, answers.transcript


def test_purging_mailman_drops_its_table(order: Order) -> None:
    for key in ("transport_maps", "local_recipient_maps"):
        assert "mailman3" not in order.after_purge[key], order.after_purge[key]


def test_without_mailman_the_relay_still_accepts_its_other_addresses(order: Order) -> None:
    answers = order.without_mailman
    # No 4xx anywhere: a missing table would answer 451 "temporary lookup failure".
    assert answers.rcpt == {ALIAS_ADDRESS: 250, LIST_ADDRESS: 550, UNKNOWN_ADDRESS: 550}, answers.transcript
    assert answers.data == 250, answers.transcript
