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


# A site's first changelog (oignons-mail release --site, when the site has none yet).
SOURCE_PACKAGE = "oignons-mail"
FIRST_DISTRIBUTION = "unstable"
FIRST_URGENCY = "medium"


def add_release(
    changelog_path: Path, version: str, message: str, author: str, now: datetime, *, create: bool = False
) -> str:
    """Add an entry for `version` at the top of the changelog; return the new entry's first line.

    `create`: a missing changelog is started, with this entry as its first.
    """
    try:
        new = Version(version)
    except ValueError:
        raise ReleaseError(f"{version}: not a Debian version (e.g. 0.2.0)") from None
    if create and not changelog_path.exists():
        return _first_release(changelog_path, new, message, author, now)
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
    _replace(changelog_path, changelog, changelog_path.stat().st_mode & 0o777)
    return f"{changelog.package} ({new}) {changelog.distributions}; urgency={changelog.urgency}"


def _first_release(changelog_path: Path, version: Version, message: str, author: str, now: datetime) -> str:
    changelog = Changelog()
    changelog.new_block(
        package=SOURCE_PACKAGE,
        version=version,
        distributions=FIRST_DISTRIBUTION,
        urgency=FIRST_URGENCY,
        changes=change_lines(message),
        author=author,
        date=email.utils.format_datetime(now),
    )
    _replace(changelog_path, changelog, 0o644)
    return f"{SOURCE_PACKAGE} ({version}) {FIRST_DISTRIBUTION}; urgency={FIRST_URGENCY} (new: {changelog_path})"


def _replace(changelog_path: Path, changelog: Changelog, mode: int) -> None:
    """Write the changelog beside its path, then rename it over: never half written."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=changelog_path.parent, prefix=".changelog.", delete=False
    ) as temporary:
        changelog.write_to_open_file(temporary)
    os.chmod(temporary.name, mode)
    os.replace(temporary.name, changelog_path)
