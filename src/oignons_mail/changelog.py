"""Which changelog is a site's: its release history, its versions, its authors.

Every site has its own: `SITE.changelog` beside the site file `SITE.toml`
(sites/mine.toml -> sites/mine.changelog), which `oignons-mail release --site`
edits and `oignons-mail build` copies into its build tree as
debian/changelog.  The committed debian/changelog is the default site's
(what sbuild builds): a site without a file of its own uses it only when
that changelog was started by the site's own package.maintainer (its
oldest entry's author; later entries may be signed by DEBFULLNAME), so
that no other site ever publishes the default site's releases as its own.

Stdlib only: `dns`, `validate` and `pin` must run where python3-debian is
not installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from oignons_mail.errors import BuildError

SUFFIX = ".changelog"
SOURCE_CHANGELOG = Path("debian") / "changelog"
# The trailer line of an entry: " -- Name <address>  date".
_TRAILER_RE = re.compile(r"^ -- (?P<author>.+?>)  ")


@dataclass(frozen=True)
class SiteChangelog:
    """The changelog of one site; `shared`: the source tree's debian/changelog (the default site's)."""

    path: Path
    exists: bool
    shared: bool  # the source tree's debian/changelog


def own_path(site_file: Path) -> Path:
    """SITE.changelog beside SITE.toml."""
    return site_file.with_suffix(SUFFIX)


def first_author(changelog: Path) -> str | None:
    """The author of the changelog's oldest entry (its last trailer line), None if it has none."""
    author = None
    try:
        with changelog.open(encoding="utf-8") as handle:
            for line in handle:
                match = _TRAILER_RE.match(line)
                if match:
                    author = match.group("author")
    except (OSError, UnicodeDecodeError):
        return None
    return author


def site_changelog(site_file: Path, maintainer: str, source: Path) -> SiteChangelog:
    """The site's changelog: its own file, else the source tree's when the site's maintainer signed it."""
    own = own_path(site_file)
    if own.exists():
        return SiteChangelog(own, exists=True, shared=False)
    shared = source / SOURCE_CHANGELOG
    if first_author(shared) == maintainer:
        return SiteChangelog(shared, exists=True, shared=True)
    return SiteChangelog(own, exists=False, shared=False)


def require(site_file: Path, maintainer: str, source: Path) -> Path:
    """The site's existing changelog, or a BuildError saying how to start one."""
    found = site_changelog(site_file, maintainer, source)
    if found.exists:
        return found.path
    shared = source / SOURCE_CHANGELOG
    raise BuildError(
        f"{site_file}: this site has no changelog yet ({found.path} is missing), and {shared} is another "
        f"site's release history (started by {first_author(shared) or 'nobody'}, not by package.maintainer "
        f"= {maintainer}); nothing was built\n"
        f"  hint: start this site's own with oignons-mail release --site {site_file} 0.1.0 "
        f'--message "First release for this site." (it creates {found.path}; keep it beside the site file)'
    )
