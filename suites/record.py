"""pytest plugin, in every run: each test's outcome, and whether it reached the lock.

Written here rather than read back from ``--junitxml`` because junit loses the node ids
(parametrized ids, classes) that known_differences.txt names, and the failure's message.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from . import env, stats
from .outcomes import RunRecord


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = RunRecord()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        before = stats.admitted()
        try:
            return (yield)
        finally:
            result = self.record.tests.get(item.nodeid)
            if result is not None and stats.admitted() > before:
                result.through_lock = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Phases merge worst-first: a skipped setup or an error in teardown wins over "passed".
        if report.passed:
            self.record.add(report.nodeid, "passed")
        elif report.skipped:
            self.record.add(report.nodeid, "skipped")  # xfail too, as junit counts it
        elif report.when == "call":
            self.record.add(report.nodeid, "failed", _message(report))
        else:
            self.record.add(report.nodeid, "error", f"in {report.when}: {_message(report)}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.record.add(report.nodeid or "<collection>", "error", _message(report))

    def pytest_sessionfinish(self) -> None:
        self.record.write(self.path)


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    return str(message) if message else str(report.longrepr)


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(env.RESULTS)
    if path:
        config.pluginmanager.register(Recorder(Path(path)), "sessionlock-suite-recorder")
