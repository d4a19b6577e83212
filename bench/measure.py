"""A figure of the benchmark: its runs, their median, min and max."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Figure:
    key: str  # the key in results.json
    unit: str
    target: str = ""
    values: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def minimum(self) -> float:
        return min(self.values)

    @property
    def maximum(self) -> float:
        return max(self.values)


def not_measured(key: str, unit: str, target: str, why: str) -> Figure:
    return Figure(key, unit, target, [], f"not measured: {why}")


def seconds_of(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
