"""Plain against wrapped: the table, the new failures, and the known differences."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .outcomes import OUTCOMES, RunRecord, TestResult
from .run import RunResult

KNOWN_DIFFERENCES = Path(__file__).with_name("known_differences.txt")
_ENTRY = re.compile(r"^(?P<suite>[\w.-]+)\s+(?P<test>\S.*?)\s+#\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class NewFailure:
    suite: str
    backend: str
    test: str
    wrapped: TestResult | None  # None: the test vanished from the wrapped run


def read_known(path: Path = KNOWN_DIFFERENCES) -> dict[tuple[str, str], str]:
    """(suite, test id) -> reason. Every entry needs its reason: a bare id is an error."""
    known: dict[tuple[str, str], str] = {}
    if not path.exists():
        return known
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: want '<suite> <test id>  # <reason>'")
        known[(match["suite"], match["test"])] = match["reason"]
    return known


def new_failures(plain: RunRecord, wrapped: RunResult) -> list[NewFailure]:
    """Tests that pass plain and fail, error or vanish wrapped."""
    found = []
    for test, result in sorted(plain.tests.items()):
        if result.outcome != "passed":
            continue
        after = wrapped.record.tests.get(test)
        if after is None or after.outcome in ("failed", "error"):
            found.append(NewFailure(wrapped.job.suite.name, _backend(wrapped), test, after))
    return found


def table(plain: dict[str, RunResult], wrapped: Iterable[RunResult]) -> str:
    header = ("suite", "backend", "plain p/f/e/s", "wrapped p/f/e/s", "via lock", "new", "seconds")
    rows = [header]
    for run in wrapped:
        base = plain[run.job.suite.plain]
        rows.append(
            (
                run.job.suite.name,
                _backend(run),
                _counts(base),
                _counts(run),
                str(run.record.exercised()),
                str(len(new_failures(base.record, run))),
                f"{base.seconds:.0f} / {run.seconds:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _counts(run: RunResult) -> str:
    if run.broken and not run.record.tests:
        return "BROKEN"
    counts = run.record.counts()
    return "/".join(str(counts[outcome]) for outcome in OUTCOMES)


def _backend(run: RunResult) -> str:
    return run.job.backend or "plain"


def describe(failure: NewFailure) -> str:
    if failure.wrapped is None:
        return "missing from the wrapped run"
    return f"{failure.wrapped.outcome}: {failure.wrapped.message}"
