"""One run's per-test outcomes, as the recorders write them and the report reads them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Outcome = Literal["passed", "failed", "error", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "error", "skipped")
_RANK = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}


@dataclass
class TestResult:
    outcome: Outcome
    message: str = ""
    through_lock: bool = False  # sent at least one request the lock admitted


@dataclass
class RunRecord:
    """Test id -> result; written by a recorder in the suite's process."""

    tests: dict[str, TestResult] = field(default_factory=dict)

    def add(self, test_id: str, outcome: Outcome, message: str = "") -> None:
        """Merge a phase's outcome: the worst wins (a failed call beats a teardown error)."""
        current = self.tests.get(test_id)
        if current is None:
            self.tests[test_id] = TestResult(outcome, _short(message))
        elif _RANK[outcome] > _RANK[current.outcome]:
            current.outcome = outcome
            current.message = _short(message) or current.message

    def counts(self) -> dict[Outcome, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for result in self.tests.values():
            counts[result.outcome] += 1
        return counts

    def exercised(self) -> int:
        return sum(result.through_lock for result in self.tests.values())

    def write(self, path: Path) -> None:
        data = {test_id: asdict(result) for test_id, result in self.tests.items()}
        path.write_text(json.dumps({"tests": data}, indent=0, sort_keys=True))

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        return cls({test_id: TestResult(**result) for test_id, result in data["tests"].items()})


def _short(message: str) -> str:
    """The message's first line, bounded: enough to triage from the report."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
