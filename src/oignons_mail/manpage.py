"""The manual pages, written from the definitions the tool itself uses (no second copy).

oignons-mail(1) from the argparse definitions; oignons-mail-site(5), the site
file's format, from schema.SCHEMA, which the site parser reads too.
debian/rules runs `python3 -m oignons_mail.manpage [--section 5] VERSION DATE`
at build time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from oignons_mail import schema
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


SITE_PAGE = "oignons-mail-site"

_SITE_DESCRIPTION = (
    "A site file describes one association's mail setup, for both roles: the relay "
    "(package oignons-mail-relay) and the nodes that send through it (oignons-mail-smarthost). "
    "It is TOML (https://toml.io/), in UTF-8 without a byte order mark. "
    "oignons-mail validate FILE checks it; every other command that reads it checks it first.",
    "A broken file stops the tool with exit status 2 and one message naming the file, the key, "
    "its value and the rule it breaks, with a hint. A key the format does not know is refused, "
    "with the closest known key: a misspelt key is reported as unknown, not the right one as missing. "
    "Every key is required unless a default is given; a table marked optional may be left out.",
)


def example_site() -> str:
    """A whole site file, of every table and key with its example value: one that validates."""
    lines: list[str] = []
    for table in schema.SCHEMA:
        header = f"[[{table.path}]]" if table.array else f"[{table.path}]"
        lines += ["", header] if lines else [header]
        lines += [f"{key.name} = {key.example}" for key in table.keys]
    return "\n".join(lines) + "\n"


def _breakable(roff: str) -> str:
    """A pin's 64 hex digits, too long for a line, get break points (\\:) every 16 digits."""
    return re.sub(r"[0-9a-f]{40,}", lambda word: "\\:".join(re.findall(r".{1,16}", word.group(0))), roff)


def _key_heading(key: schema.Key) -> str:
    given = "required" if key.required else f"default: {key.default}"
    return f"\\fB{roff_text(key.name)}\\fR = \\fI{roff_text(key.kind)}\\fR ({roff_text(given)})"


def site_manpage(version: str, date: str) -> str:
    """The roff source of section 5's page: every table and key of schema.SCHEMA."""
    lines = [
        f'.TH {SITE_PAGE.upper()} 5 "{date}" "oignons-mail {version}" "File Formats"',
        ".SH NAME",
        f"{roff_text(SITE_PAGE)} \\- the site file of oignons\\-mail: one association's mail setup",
        ".SH SYNOPSIS",
        "\\fBoignons\\-mail validate\\fR \\fIFILE\\fR",
        ".br",
        "\\fBmake deb SITE=\\fR\\fIFILE\\fR",
        ".SH DESCRIPTION",
    ]
    for paragraph in _SITE_DESCRIPTION:
        lines += [".PP", roff_text(paragraph)]
    lines.append(".SH TABLES")
    for table in schema.SCHEMA:
        header = f"[[{table.path}]]" if table.array else f"[{table.path}]"
        lines += [f".SS {roff_text(header)}", roff_text(table.doc)]
        if table.optional:
            lines += [".PP", "Optional: left out, every key takes its default."]
        for key in table.keys:
            lines += [".TP", _key_heading(key), roff_text(key.doc)]
            lines += [".br", f"Rule: {roff_text(key.rule)}."]
            lines += [".br", f"Example: {_breakable(roff_text(f'{key.name} = {key.example}'))}"]
    lines += [
        ".SH EXAMPLE",
        "A site file with every key, each set to its example (it validates):",
        ".PP",
        ".nf",
        ".RS 4",
        roff_text(example_site()),
        ".RE",
        ".fi",
        ".SH FILES",
        ".TP",
        ".I sites/nos\\-oignons.toml",
        "The default site, in the source tree: copy it for another association.",
        ".SH SEE ALSO",
        ".BR oignons\\-mail (1),",
        ".BR postconf (5)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description="Write a manual page of oignons-mail to standard output.")
    arguments.add_argument(
        "--section", choices=("1", "5"), default="1", help="1: the command (default); 5: the site file"
    )
    arguments.add_argument("version")
    arguments.add_argument("date", help="YYYY-MM-DD")
    args = arguments.parse_args(argv)
    page = site_manpage if args.section == "5" else (lambda v, d: manpage(cli_parser(), v, d))
    sys.stdout.write(page(args.version, args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
