"""The manual page, written from the argparse definitions (no second copy of the options).

debian/rules runs `python3 -m oignons_mail.manpage VERSION DATE` at build time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oignons_mail.cli import parser as cli_parser

_EXIT_STATUS = (
    ("0", "success (for render \\-\\-diff \\-\\-check: no difference)"),
    ("1", "a failure: a command the tool ran failed, a difference (render \\-\\-diff \\-\\-check)"),
    ("2", "wrong usage or input: a broken site file, a folder render may not write, a version not greater"),
)


def roff_text(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line taken for a request."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line if line.startswith((".", "'")) else line) for line in escaped.splitlines())


def _help(action: argparse.Action, prog: str) -> str:
    # argparse's own expansion of %(default)s and the like.
    return (action.help or "") % dict(vars(action), prog=prog)


def _option_heading(action: argparse.Action) -> str:
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if not action.option_strings:
        return f"\\fI{roff_text(str(metavar))}\\fR"
    names = ", ".join(f"\\fB{roff_text(name)}\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    return f"{names} \\fI{roff_text(str(metavar))}\\fR"


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    commands: list[argparse.ArgumentParser] = []
    for action in parser._actions:  # argparse has no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            commands.extend(action.choices.values())
    return commands


def manpage(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    """The roff source of section 1's page for parser and its subcommands."""
    name = parser.prog
    lines = [
        f'.TH {name.upper()} 1 "{date}" "{name} {version}" "User Commands"',
        ".SH NAME",
        f"{name} \\- {roff_text(parser.description or '')}",
        ".SH SYNOPSIS",
        f".B {name}",
        "\\fICOMMAND\\fR [\\fIOPTION\\fR]...",
        ".SH OPTIONS",
    ]
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            lines += [".TP", _option_heading(action), roff_text(_help(action, name))]
    lines.append(".SH COMMANDS")
    for command in _subcommands(parser):
        usage = " ".join(command.format_usage().removeprefix("usage: ").split())
        lines += [f".SS {roff_text(command.prog.removeprefix(name + ' '))}", roff_text(command.description or "")]
        lines += [".PP", f"Usage: {roff_text(usage)}"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            lines += [".TP", _option_heading(action), roff_text(_help(action, command.prog))]
    lines.append(".SH EXIT STATUS")
    for status, meaning in _EXIT_STATUS:
        lines += [".TP", f".B {status}", meaning]
    lines += [
        ".SH SEE ALSO",
        ".BR postconf (5),",
        ".BR dpkg\\-buildpackage (1)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description="Write the manual page of oignons-mail to standard output.")
    arguments.add_argument("version")
    arguments.add_argument("date", help="YYYY-MM-DD")
    args = arguments.parse_args(argv)
    sys.stdout.write(manpage(cli_parser(), args.version, args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
