"""Helpers of the oignons-mail autopkgtests (debian/tests/smarthost, debian/tests/relay).

The tests check the packages as installed in the testbed: no building.  Python
3 standard library only.  Every command and every wait is bounded.

Mail must not leave the testbed.  The smarthost's relay,
bulbe.nos-oignons.net, names the association's real server, and some
virtualisation servers (unshare among them) share the host's network.  So the part of a test that starts
Postfix runs in its own network namespace, where only the loopback interface
exists (`run_isolated()`): there is no route and no DNS, mail can go to 127.0.0.1
only, and a message for another host stays deferred.  The same namespaces
(PID, mount) make Postfix die with the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

COMMAND_TIMEOUT = 120
WAIT_TIMEOUT = 90
ISOLATED_ENV = "OIGNONS_AUTOPKGTEST_ISOLATED"
# Where Postfix logs while the test runs (there is no syslog in a testbed).
MAIL_LOG = "/var/log/oignons-autopkgtest-mail.log"

T = TypeVar("T")


class CheckError(Exception):
    """A check failed: the message says what was expected and what was seen."""


def say(message: str) -> None:
    print(message, flush=True)


def run(command: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (bounded); fail with its output unless it succeeds or check is False."""
    env = dict(os.environ, LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
    try:
        result = subprocess.run(
            list(command),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        raise CheckError(f"timed out after {COMMAND_TIMEOUT}s: {' '.join(command)}") from expired
    if check and result.returncode != 0:
        raise CheckError(
            f"`{' '.join(command)}` failed with status {result.returncode}\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
        )
    return result


def postconf_n() -> dict[str, str]:
    """The explicit main.cf settings (`postconf -n`) as a dict."""
    settings = {}
    for line in run(["postconf", "-n"]).stdout.splitlines():
        key, _, value = line.partition(" = ")
        settings[key] = value
    return settings


def check_settings(expected: dict[str, str]) -> None:
    settings = postconf_n()
    wrong = {key: settings.get(key, "(unset)") for key, value in expected.items() if settings.get(key) != value}
    if wrong:
        lines = [f"  {key} = {seen}   (expected: {expected[key]})" for key, seen in wrong.items()]
        raise CheckError("postconf -n differs:\n" + "\n".join(lines))
    for key, value in expected.items():
        say(f"ok: postconf -n: {key} = {value}")


def check_postfix_check() -> None:
    """`postfix check` succeeds and says nothing (no warning, no error)."""
    result = run(["postfix", "check"])
    output = (result.stdout + result.stderr).strip()
    if output:
        raise CheckError(f"postfix check is not clean:\n{output}")
    say("ok: postfix check is clean")


def check_lookup(command: str, table: str, key: str, expected: str) -> None:
    """`postmap -q` or `postalias -q` of one key of a table."""
    seen = run([command, "-q", key, table], check=False).stdout.strip()
    if seen != expected:
        raise CheckError(f"{command} -q {key} {table}: {seen or '(not found)'} (expected: {expected})")
    say(f"ok: {command} -q {key} {table} = {seen}")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_TIMEOUT) -> T:
    """Call probe until it returns something other than None, for at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise CheckError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def in_private_network() -> None:
    """Bring up the loopback of this private network namespace; check no route leaves it."""
    run(["ip", "link", "set", "lo", "up"])
    # Tunnel devices (sit0, ...) may exist in every namespace, down and
    # without routes: what matters is that every route goes through lo.
    routes = [
        line
        for family in ("-4", "-6")
        for line in run(["ip", family, "-o", "route", "show", "table", "all"]).stdout.splitlines()
        if line.strip()
    ]
    outside = [route for route in routes if " dev lo " not in f"{route} "]
    if outside or not routes:
        raise CheckError("the test's network namespace has routes beyond the loopback:\n" + "\n".join(routes))
    say("ok: in a private network namespace: every route is through the loopback interface")


def run_isolated() -> int:
    """Run this script again in private network, PID and mount namespaces; its status.

    Propagation "unchanged": in a chroot-like testbed (unshare) "/" is not a
    mount point and cannot be made private; --mount-proc makes /proc private
    before mounting the new one there.
    """
    command = [
        "unshare",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--mount-proc",
        "--propagation",
        "unchanged",
        "env",
        f"{ISOLATED_ENV}=1",
        sys.executable,
        *sys.argv,
    ]
    say("--- the Postfix part runs in its own network, PID and mount namespaces")
    try:
        return subprocess.run(command, timeout=600, check=False).returncode
    except subprocess.TimeoutExpired:
        say("FAIL: the isolated part timed out after 600s")
        return 1


def start_postfix() -> None:
    """Start Postfix (there is no systemd in most testbeds), logging to MAIL_LOG."""
    # There is no syslog in a testbed: Postfix's own logger (postlogd, 3.4+).
    run(["postconf", "-e", f"maillog_file = {MAIL_LOG}"])
    if run(["postfix", "status"], check=False).returncode != 0:
        run(["postfix", "start"])
    wait_for("Postfix to run", lambda: True if run(["postfix", "status"], check=False).returncode == 0 else None)
    say("ok: Postfix started")


def stop_postfix() -> None:
    run(["postfix", "stop"], check=False)


def queue() -> list[dict[str, object]]:
    """The mail queue, one dict per message (`postqueue -j`)."""
    lines = run(["postqueue", "-j"]).stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def recipients(message: dict[str, object]) -> list[dict[str, str]]:
    value = message.get("recipients", [])
    return value if isinstance(value, list) else []


def show_diagnostics() -> None:
    """What a failing test prints: the queue and Postfix's log."""
    for title, command in (("mailq", ["mailq"]), ("postqueue -j", ["postqueue", "-j"])):
        result = run(command, check=False)
        say(f"--- {title}\n{result.stdout}{result.stderr}")
    try:
        with open(MAIL_LOG, encoding="utf-8", errors="replace") as log:
            say(f"--- {MAIL_LOG} (last 80 lines)\n" + "".join(log.readlines()[-80:]))
    except OSError as error:
        say(f"--- {MAIL_LOG}: {error}")


def main(outside: Callable[[], None], inside: Callable[[], None]) -> None:
    """Run a test: `outside` in the testbed as it is, then `inside` isolated (see run_isolated).

    Exits 0 if both pass, 1 with the reason if one fails.
    """
    if os.environ.get(ISOLATED_ENV) != "1":
        try:
            outside()
        except CheckError as failure:
            say(f"FAIL: {failure}")
            sys.exit(1)
        sys.exit(run_isolated())
    try:
        in_private_network()
        inside()
    except CheckError as failure:
        say(f"FAIL: {failure}")
        show_diagnostics()
        sys.exit(1)
    finally:
        stop_postfix()
