"""Tiny helpers shared by the benchmarks: argument parsing, medians, an aligned table.

from benchmarks._table import print_table
print_table(["variant", "µs"], [["bare", "12.3"], ["wrapped", "12.9"]])
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Sequence

__all__ = ["median", "parse_args", "percentile", "print_table", "rss_bytes"]


def parse_args(description: str) -> argparse.Namespace:
    """The one flag every benchmark takes: ``--quick`` for a short run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    return parser.parse_args()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest rank: no interpolation between samples."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rss_bytes() -> int:
    """Resident set size right now, from ``/proc/self/statm`` (Linux)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``headers``: text left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return False
    return True


def measure(
    variants: dict[str, Callable[[int], float]], *, rounds: int, n: int
) -> dict[str, list[float]]:
    """µs/request per variant per round, variants interleaved in a rotating order.

    ``variants`` map a name to a batch: run ``n`` requests, return µs per request. Each is
    warmed up first (imports, lazy middleware stacks, caches).
    """
    names = list(variants)
    for name in names:
        variants[name](max(1, n // 10))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(variants[name](n))
    return times
