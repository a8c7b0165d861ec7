"""One figure of the summary table: what was measured, against what, met or not.

Every benchmark module exposes ``figures(quick: bool) -> list[Figure]``; ``python -m
benchmarks`` runs each module in a subprocess, which writes its figures as JSON (see
:func:`dump`), and prints them all in one table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["HEADERS", "Figure", "dump", "load", "met_text", "print_figures", "row"]

HEADERS = ["figure", "measured", "anchor (same run)", "target", "met?"]


@dataclass(frozen=True)
class Figure:
    """One row: ``measured`` and ``anchor`` are display text; ``met`` is None without a verdict."""

    name: str
    measured: str
    anchor: str
    target: str
    met: bool | None

    @classmethod
    def unavailable(cls, name: str, target: str, why: str) -> Figure:
        """A figure that could not be measured in this run (a tool or module missing)."""
        return cls(name, "n/a", why, target, None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        met = data.get("met")
        return cls(
            str(data["name"]),
            str(data["measured"]),
            str(data["anchor"]),
            str(data["target"]),
            met if isinstance(met, bool) else None,
        )


def met_text(figure: Figure) -> str:
    if figure.met is None:
        return "-" if figure.measured != "n/a" else "n/a"
    return "yes" if figure.met else "NO"


def row(figure: Figure) -> list[str]:
    return [figure.name, figure.measured, figure.anchor, figure.target, met_text(figure)]


def print_figures(figures: Sequence[Figure]) -> None:
    """The figures as an aligned table (each module's ``main`` ends with its own)."""
    from ._table import print_table

    print_table(HEADERS, [row(figure) for figure in figures])


def dump(figures: Sequence[Figure], path: Path) -> None:
    path.write_text(json.dumps([asdict(figure) for figure in figures], indent=1))


def load(path: Path) -> list[Figure]:
    return [Figure.from_json(item) for item in json.loads(path.read_text())]
