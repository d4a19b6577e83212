"""A release: a new debian/changelog entry, which `make deb` then builds.

python-debian reads and writes the changelog; the version must be greater
than the last one (dpkg's order), so that apt takes the release as an upgrade.
"""

from __future__ import annotations

import email.utils
import os
import tempfile
import textwrap
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from debian.changelog import Changelog
from debian.debian_support import Version

from oignons_mail.errors import EXIT_USAGE, UserMessageError


class ReleaseError(UserMessageError):
    """The release cannot be made as asked (its version, the changelog)."""

    exit_status = EXIT_USAGE


def author(site_maintainer: str, environment: Mapping[str, str]) -> str:
    """The entry's author: DEBFULLNAME <DEBEMAIL> when both are set (dch's convention), else the site's maintainer."""
    name, address = environment.get("DEBFULLNAME", ""), environment.get("DEBEMAIL", "")
    if name and address:
        return f"{name} <{address}>"
    return site_maintainer


def change_lines(message: str) -> list[str]:
    """The message as one changelog item ("  * ..."), wrapped at 80 columns; blank lines around it."""
    text = " ".join(message.split())
    if not text:
        raise ReleaseError("--message: must say what changed (it becomes the changelog entry)")
    return ["", *textwrap.wrap(text, width=80, initial_indent="  * ", subsequent_indent="    "), ""]


def add_release(changelog_path: Path, version: str, message: str, author: str, now: datetime) -> str:
    """Add an entry for `version` at the top of the changelog; return the new entry's first line."""
    try:
        new = Version(version)
    except ValueError:
        raise ReleaseError(f"{version}: not a Debian version (e.g. 0.2.0)") from None
    try:
        with changelog_path.open(encoding="utf-8") as handle:
            changelog = Changelog(handle, strict=True)
    except OSError as error:
        raise ReleaseError(f"{changelog_path}: cannot be read: {error}") from None
    last = changelog.version
    if not new > last:
        raise ReleaseError(
            f"{version}: not greater than the last version in {changelog_path}, {last}; "
            "apt upgrades only to a greater version (dpkg --compare-versions)"
        )
    changelog.new_block(
        package=changelog.package,
        version=new,
        distributions=changelog.distributions,
        urgency=changelog.urgency,
        changes=change_lines(message),
        author=author,
        date=email.utils.format_datetime(now),
    )
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=changelog_path.parent, prefix=".changelog.", delete=False
    ) as temporary:
        changelog.write_to_open_file(temporary)
    os.chmod(temporary.name, changelog_path.stat().st_mode & 0o777)
    os.replace(temporary.name, changelog_path)
    return f"{changelog.package} ({new}) {changelog.distributions}; urgency={changelog.urgency}"
