"""Postfix and Debian text formats, as pure string functions.

Nothing here reads or writes files: each function takes values and returns the
text Postfix (or debconf) expects, so each is tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Where the packages build the tables they manage (their sources are the
# package's data in /usr/share, not conffiles: see docs/administration.md).
TABLE_DIRECTORY = "/etc/postfix/oignons-mail"
# The administrator's own aliases, never shipped, searched before ours.
LOCAL_ALIASES = "aliases.local"
# Debian's own alias file: kept, and searched after ours.
SYSTEM_ALIASES = "hash:/etc/aliases"

# Loopback only, IPv4, IPv4-mapped and IPv6 (the wiki's [::ffff:127.0.0.0]/124
# was a typo for /104: 127.0.0.0/8 mapped into IPv6 is ::ffff:127.0.0.0/104).
LOOPBACK_NETWORKS = "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"


def table(name: str, kind: str = "hash") -> str:
    """The Postfix name of a table this project manages, e.g. hash:/etc/postfix/oignons-mail/aliases."""
    return f"{kind}:{TABLE_DIRECTORY}/{name}"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def comma_list(values: Iterable[str]) -> str:
    return ", ".join(values)


def relayhost_for(relay_hostname: str, domain: str) -> str:
    """relayhost as the wiki writes it: relative to $mydomain when it can be.

    No brackets: Postfix looks up the MX record first, as the wiki's
    `relayhost = bulbe.$mydomain` does.
    """
    suffix = "." + domain
    if relay_hostname.endswith(suffix):
        return relay_hostname[: -len(suffix)] + ".$mydomain"
    return relay_hostname


def main_cf_lines(settings: Sequence[tuple[str, str]]) -> list[str]:
    """main.cf settings as `key = value` lines, the input of `postconf -e`.

    Postfix joins continuation lines; a value must therefore be one line.
    """
    lines = []
    for key, value in settings:
        if "\n" in value or not key.isidentifier():
            raise ValueError(f"not a one-line main.cf setting: {key!r} = {value!r}")
        # `postconf -n` shows an empty value as "key =": so must the record.
        lines.append(f"{key} = {value}" if value else f"{key} =")
    return lines


def master_cf_entry(
    service: str,
    kind: str,
    command: str,
    *,
    private: str = "-",
    unprivileged: str = "-",
    chroot: str = "n",
    wakeup: str = "-",
    process_limit: str = "-",
    arguments: Sequence[str] = (),
) -> str:
    """One master.cf service as `postconf -M -e` takes it: `service/type = entry`.

    Arguments go on the same line: postconf -M joins them anyway, and one line
    per service keeps the rendered file line-oriented for the maintainer scripts.
    """
    fields = [service, kind, private, unprivileged, chroot, wakeup, process_limit, command, *arguments]
    if any(not field or any(c.isspace() for c in field) for field in fields[:8]):
        raise ValueError(f"a master.cf field is empty or has spaces: {fields[:8]!r}")
    return f"{service}/{kind} = " + " ".join(fields)


def alias_lines(aliases: Sequence[tuple[str, str]]) -> list[str]:
    """aliases(5) entries: `name: target`."""
    return [f"{name}: {target}" for name, target in aliases]


def map_lines(entries: Sequence[tuple[str, str]]) -> list[str]:
    """postmap(1) source entries: `key value`, keys aligned for people."""
    width = max((len(key) for key, _ in entries), default=0)
    return [f"{key.ljust(width)}  {value}" for key, value in entries]
