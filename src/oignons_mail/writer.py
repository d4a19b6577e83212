"""The one place that writes rendered files, and shows how they differ.

The writer never deletes a file it did not write.  It writes into a folder
that is missing or empty, or that it wrote before: such a folder holds a
manifest (MANIFEST) naming every file the writer put there, and a file that
a later rendering no longer makes is removed only if the manifest names it.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from oignons_mail.errors import DestinationError, UserMessageError
from oignons_mail.render import RenderedTree

# Written last, at the top of the folder: what the writer wrote there.
MANIFEST = ".oignons-mail-rendered"
_MANIFEST_HEADER = "# Files written by `oignons-mail render`; it removes only these.\n"


def _target(dest: Path, relative: str) -> Path:
    path = dest / relative
    # render() makes relative paths; refuse anything that would leave dest.
    if relative.startswith("/") or path.resolve() != dest.resolve() / relative:
        raise UserMessageError(f"refusing to write outside {dest}: {relative}")
    return path


@dataclass(frozen=True)
class TreeChanges:
    """What write_tree did: files written (new or changed) and stale files removed."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def write_tree(files: RenderedTree, dest: Path) -> TreeChanges:
    """Write every file under dest (atomically, each one); report what changed.

    dest must be missing, empty, or a folder the writer wrote before, holding
    only files its manifest names: anything else is refused, never removed.  Files
    of an earlier rendering that this one does not make are removed, so dest
    is exactly the rendering: a stale file must not end up in a package.
    """
    try:
        return _write_tree(files, dest)
    except OSError as error:
        raise DestinationError(f"{dest}: cannot write: {error}") from None


def _write_tree(files: RenderedTree, dest: Path) -> TreeChanges:
    previous = _manifest(dest)
    foreign = sorted(_existing(dest) - previous)
    if foreign and not (dest / MANIFEST).is_file():
        raise DestinationError(
            f"{dest}: is not empty and was not made by oignons-mail render (it has no {MANIFEST}); "
            "refusing to write there, since the folder must end up holding the rendering only: "
            "render into a new or empty folder"
        )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DestinationError(
            f"{dest}: holds files that oignons-mail render did not write ({shown}); "
            "refusing to remove or keep them: move them away, or render into a new or empty folder"
        )
    changes = TreeChanges()
    for relative, text in sorted(files.items()):
        path = _target(dest, relative)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        _write_file(path, text)
        changes.written.append(relative)
    for stale in sorted(previous - set(files)):
        path = _target(dest, stale)
        if path.is_file():
            path.unlink()
            changes.removed.append(stale)
    if previous != set(files) or not (dest / MANIFEST).is_file():
        _write_file(dest / MANIFEST, _MANIFEST_HEADER + "".join(f"{relative}\n" for relative in sorted(files)))
    return changes


def replace_files(files: RenderedTree, dest: Path) -> None:
    """Write the named files under dest (a tree of someone else's: nothing else is touched)."""
    for relative, text in sorted(files.items()):
        _write_file(_target(dest, relative), text)


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as temporary:
        temporary.write(text)
    os.chmod(temporary.name, 0o644)
    os.replace(temporary.name, path)


def _manifest(dest: Path) -> set[str]:
    """What the writer wrote under dest before (empty for a missing or empty folder)."""
    if dest.exists() and not dest.is_dir():
        raise DestinationError(f"{dest}: is a file, not a folder; give the folder to render into")
    path = dest / MANIFEST
    if not path.is_file():
        return set()
    names = {line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")}
    for relative in names:
        _target(dest, relative)
    return names


def diff_tree(files: RenderedTree, dest: Path) -> str:
    """A unified diff from what is under dest to the rendering ("" when equal)."""
    if dest.exists() and not dest.is_dir():
        raise DestinationError(f"{dest}: is a file, not a folder; give the folder to compare with")
    chunks: list[str] = []
    for relative in sorted(set(files) | _existing(dest)):
        path = dest / relative
        before = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
        after = files.get(relative, "").splitlines(keepends=True)
        chunks.extend(
            difflib.unified_diff(
                before,
                after,
                fromfile=f"a/{relative}" if path.is_file() else "/dev/null",
                tofile=f"b/{relative}" if relative in files else "/dev/null",
            )
        )
    return "".join(chunks)


def _existing(dest: Path) -> set[str]:
    """The files under dest, the manifest excepted."""
    if not dest.is_dir():
        return set()
    return {str(path.relative_to(dest)) for path in dest.rglob("*") if path.is_file()} - {MANIFEST}
