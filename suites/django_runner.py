"""Django's test runner, recording each test's outcome like suites.record does for pytest.

It also gives each test a time limit (``SESSIONLOCK_SUITE_TEST_TIMEOUT``, SIGALRM in the main
thread, as pytest-timeout's signal method), so a request stuck behind a lock shows as one
failing test instead of a stuck run. Run with ``--parallel=1``: the limit and the
"through the lock" count both live in the process that runs the test.
"""

from __future__ import annotations

import os
import signal
import traceback
import unittest
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeAlias

from django.test.runner import DiscoverRunner  # type: ignore[import-untyped]

from . import env, stats
from .outcomes import Outcome, RunRecord

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]


class TestTimeout(Exception):
    """Raised in the test when it exceeds the per-test time limit."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TestTimeout(f"test exceeded {os.environ.get(env.TEST_TIMEOUT)} s")


class Recording(unittest.TextTestResult):
    """Records outcomes into :data:`RECORD`; mixed into the runner's own result class."""

    record = RunRecord()

    def startTest(self, test: unittest.TestCase) -> None:
        self._admitted = stats.admitted()
        limit = float(os.environ.get(env.TEST_TIMEOUT) or 0)
        if limit:
            signal.setitimer(signal.ITIMER_REAL, limit)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)
        result = self.record.tests.get(test.id())
        if result is not None and stats.admitted() > self._admitted:
            result.through_lock = True

    def _add(self, test: unittest.TestCase, outcome: Outcome, err: Any = None) -> None:
        self.record.add(test.id(), outcome, _message(err))

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._add(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._add(test, "failed", err)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._add(test, "error", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._add(test, "skipped")

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._add(test, "skipped")  # as pytest's xfail

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._add(test, "failed", "unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._add(test, "failed" if failed else "error", err)


def _message(err: Any) -> str:
    if err is None or isinstance(err, str):
        return err or ""
    kind, value, _ = err
    return "".join(traceback.format_exception_only(kind, value)).strip()


class RecordingRunner(DiscoverRunner):  # type: ignore[misc]
    """DiscoverRunner whose result records outcomes, written to SESSIONLOCK_SUITE_RESULTS."""

    def get_resultclass(self) -> type[unittest.TextTestResult]:
        base = super().get_resultclass() or unittest.TextTestResult
        return type("RecordingResult", (Recording, base), {})

    def run_suite(self, suite: unittest.TestSuite, **kwargs: Any) -> unittest.TestResult:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        try:
            result: unittest.TestResult = super().run_suite(suite, **kwargs)
            return result
        finally:
            signal.signal(signal.SIGALRM, previous)
            path = os.environ.get(env.RESULTS)
            if path:
                Recording.record.write(Path(path))
