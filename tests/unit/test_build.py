"""The build's copy of the source tree (oignons_mail.build)."""

from __future__ import annotations

import shutil
from pathlib import Path

from oignons_mail.build import not_copied


def test_the_source_copy_leaves_out_build_products_at_the_top_only(tmp_path: Path) -> None:
    """A file named "build" deeper down (the apply plan's golden output) is source: the build's tests read it."""
    source = tmp_path / "source"
    for name in ("build/x.deb", "dist/y.deb", ".git/HEAD", "src/m/__pycache__/m.pyc", "tests/golden/case/out/build",
                 "tests/golden/case/out/dist", "debian/control"):  # fmt: skip
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("x", encoding="utf-8")
    shutil.copytree(source, tmp_path / "copy", ignore=not_copied(source))
    copied = sorted(
        str(path.relative_to(tmp_path / "copy")) for path in (tmp_path / "copy").rglob("*") if path.is_file()
    )
    assert copied == ["debian/control", "tests/golden/case/out/build", "tests/golden/case/out/dist"]
