"""The fleet-health subcommands: `oignons-mail fleet` (the relay) and `oignons-mail status` (any host).

Standard library only: on a node the tool must not need jinja2 or python3-debian.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from oignons_mail import health, site, status
from oignons_mail.errors import EXIT_FAILURE, EXIT_OK, UsageError, UserMessageError

SENDMAIL = "/usr/sbin/sendmail"
SENDMAIL_TIMEOUT = 30.0


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _duration(value: str) -> int:
    try:
        return site.postfix_time_seconds(site.positive_time(value))
    except site.RuleError as error:
        raise UsageError(f"--late-after {value}: {error.rule} ({error.hint})") from None


def fleet_settings(path: Path) -> tuple[int, int, tuple[str, ...]]:
    """late_after, queue_after and the expected nodes, from the relay's rendered fleet.json (or the defaults)."""
    defaults = (site.FLEET_LATE_AFTER, site.FLEET_QUEUE_AFTER)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        return int(config["late_after_seconds"]), int(config["queue_after_seconds"]), tuple(config["nodes"])
    except FileNotFoundError:
        return site.postfix_time_seconds(defaults[0]), site.postfix_time_seconds(defaults[1]), ()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserMessageError(f"{path}: cannot be read: {error}") from None


def current_states(args: argparse.Namespace, now: float) -> list[health.HostState]:
    late_after, queue_after, nodes = fleet_settings(args.config)
    if args.late_after is not None:
        late_after = _duration(args.late_after)
    expect = args.expect_version
    if expect is not None and not health.version_pattern_matches(expect):
        raise UsageError(f"--expect-version {expect}: not a Debian version (e.g. 0.3.0)")
    thresholds = health.Thresholds(late_after, queue_after, expect)
    return health.fleet_states(health.StateStore(args.state).records(), nodes, thresholds, now)


def cmd_fleet(args: argparse.Namespace) -> int:
    store = health.StateStore(args.state)
    if args.forget is not None:
        try:
            forgotten = store.forget(args.forget)
        except health.HeartbeatError as error:
            raise UsageError(f"--forget: {error}") from None
        print(f"forgot {args.forget}" if forgotten else f"{args.forget}: not recorded")
        return EXIT_OK if forgotten else EXIT_FAILURE
    now = _now()
    states = current_states(args, now)
    if args.report:
        return report(states, args, now)
    if args.json:
        print(json.dumps([s.as_json() for s in states], indent=2))
    else:
        print(f"{'HOST':<16} {'VERSION':<12} {'LAST HEARD (UTC)':<36} {'QUEUE':<24} STATE")
        for state in states:
            print(health.fleet_line(state))
    return EXIT_OK if all(s.state == "ok" for s in states) else EXIT_FAILURE


def report(states: list[health.HostState], args: argparse.Namespace, now: float) -> int:
    """Mail root what changed since the last report (nothing when nothing did); write the metrics."""
    local = status.checks(status.Host(), now)
    current = health.snapshot(states, status.failing(local))
    try:
        previous = json.loads(args.report_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    changes = health.report_changes(previous, current)
    health.write_metrics(health.fleet_metrics(states))
    if changes:
        hostname = status.postconf(status.Host(), "myhostname").get("myhostname", "localhost")
        for line in changes:
            print(line)
        print(f"mailed root: <{send_report(hostname, changes, states, local)}>")
    health.write_atomically(args.report_state, json.dumps(current, indent=1, sort_keys=True) + "\n")
    return EXIT_OK


def report_text(
    hostname: str, changes: list[str], states: list[health.HostState], local: list[status.Check], message_id: str
) -> str:
    lines = [
        "To: root",
        f"Message-Id: <{message_id}>",
        f"Subject: oignons-mail fleet: {len(changes)} change(s) seen on {hostname}",
        "Auto-Submitted: auto-generated",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Changes since the last report:",
        *(f"  {line}" for line in changes),
        "",
        "The fleet now (oignons-mail fleet):",
        *(f"  {health.fleet_line(s)}" for s in states),
        "",
        f"Checks on {hostname} (oignons-mail status):",
        *(f"  {check.line()}" for check in local),
    ]
    return "\n".join(lines) + "\n"


def send_report(hostname: str, changes: list[str], states: list[health.HostState], local: list[status.Check]) -> str:
    """Give the report to sendmail; its Message-Id."""
    message_id = f"fleet-report.{int(_now())}.{secrets.token_hex(4)}@{hostname}"
    text = report_text(hostname, changes, states, local, message_id)
    try:
        subprocess.run([SENDMAIL, "-oi", "-t"], input=text, text=True, check=True, timeout=SENDMAIL_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as error:
        raise UserMessageError(f"the report could not be given to {SENDMAIL}: {error}") from None
    return message_id


def cmd_status(args: argparse.Namespace) -> int:
    found = status.checks(status.Host(), _now())
    if args.json:
        print(status.as_json(found), end="")
    else:
        for check in found:
            print(check.line())
    return EXIT_FAILURE if status.failing(found) else EXIT_OK


def add_parsers(add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]) -> None:
    """The two subcommands, through cli.parser()'s `add`."""
    fleet = add("fleet", cmd_fleet, "on the relay: each host's last heartbeat, version, queue and state")
    fleet.add_argument("--json", action="store_true", help="a JSON list of objects, one per host")
    fleet.add_argument(
        "--late-after", metavar="DURATION", help="late when not heard from for longer (e.g. 36h; default: the site's)"
    )
    fleet.add_argument("--expect-version", metavar="VERSION", help="hosts running an older version are 'behind'")
    fleet.add_argument("--forget", metavar="HOST", help="remove a retired host's record")
    fleet.add_argument(
        "--report",
        action="store_true",
        help="mail root what changed since the last report, write the Prometheus figures (the report timer)",
    )
    fleet.add_argument(
        "--state", type=Path, default=Path(health.STATE_DIRECTORY), help="heartbeat records (default: %(default)s)"
    )
    fleet.add_argument(
        "--config", type=Path, default=Path(health.FLEET_CONFIG), help="fleet settings (default: %(default)s)"
    )
    fleet.add_argument(
        "--report-state",
        type=Path,
        default=Path(health.REPORT_STATE),
        help="what the last report saw (default: %(default)s)",
    )
    status_parser = add("status", cmd_status, "local checks of this node or relay: ok, warn or fail, one per line")
    status_parser.add_argument("--json", action="store_true", help="a JSON list of {level, name, detail}")
