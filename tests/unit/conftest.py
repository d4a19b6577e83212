"""Make the tool's package and the test helpers importable from a source tree.

The package build runs these tests with `python3 -P` (the tree's debian/
folder must not stand in for python-debian), so neither src/ nor the tree's
root is on sys.path by itself: src/ goes first, the root (for the `tests`
helpers) last, where it cannot shadow an installed module.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
