"""The one place that writes rendered files, and shows how they differ."""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from oignons_mail.errors import UserMessageError
from oignons_mail.render import RenderedTree


def _target(dest: Path, relative: str) -> Path:
    path = dest / relative
    # render() makes relative paths; refuse anything that would leave dest.
    if path.resolve() != dest.resolve() / relative or relative.startswith("/"):
        raise UserMessageError(f"refusing to write outside {dest}: {relative}")
    return path


@dataclass(frozen=True)
class TreeChanges:
    """What write_tree did: files written (new or changed) and stale files removed."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def write_tree(files: RenderedTree, dest: Path) -> TreeChanges:
    """Write every file under dest (atomically, each one); report what changed.

    Files under dest that the tree does not name are removed, so dest is
    exactly the rendering: a stale file must not end up in a package.
    """
    changes = TreeChanges()
    for relative, text in sorted(files.items()):
        path = _target(dest, relative)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as temporary:
            temporary.write(text)
        os.chmod(temporary.name, 0o644)
        os.replace(temporary.name, path)
        changes.written.append(relative)
    for stale in sorted(_existing(dest) - set(files)):
        (dest / stale).unlink()
        changes.removed.append(stale)
    return changes


def diff_tree(files: RenderedTree, dest: Path) -> str:
    """A unified diff from what is under dest to the rendering ("" when equal)."""
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
    if not dest.is_dir():
        return set()
    return {str(path.relative_to(dest)) for path in dest.rglob("*") if path.is_file()}
