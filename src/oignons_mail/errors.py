"""Errors meant for the user, turned into exit codes only by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

# Exit statuses, as the CLI reports them.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UserMessageError(Exception):
    """An error whose message is for the person running the tool.

    The CLI prints it without a traceback and exits with `exit_status`.
    """

    exit_status = EXIT_FAILURE


@dataclass(frozen=True)
class SiteError(UserMessageError):
    """A site file breaks a rule: names the file, the key, the value and the rule."""

    file: str
    key: str
    value: object
    rule: str
    hint: str = ""

    exit_status = EXIT_USAGE

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        shown = "" if self.value is _ABSENT else f" = {_quote(self.value)}"
        message = f"{where}{shown}: {self.rule}"
        if self.hint:
            message += f"\n  hint: {self.hint}"
        return message


class UsageError(UserMessageError):
    """Options that argparse accepts one by one but not together."""

    exit_status = EXIT_USAGE


class DestinationError(UserMessageError):
    """The folder to render into is not one the writer may write (a file, someone else's folder)."""

    exit_status = EXIT_USAGE


class BuildError(UserMessageError):
    """Building the packages failed (a tool it runs failed or is missing)."""


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


# The value of a key that the file does not have.
_ABSENT: object = _Absent()
ABSENT = _ABSENT


def _quote(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
