"""The helper threads that wait on file locks and write cookie records for requests."""

from __future__ import annotations

import threading

import pytest

from sessionlock._helpers import Helpers


def test_jobs_beyond_the_limit_wait_for_a_helper_and_all_run() -> None:
    helpers = Helpers("test-helper", most=2)
    gate = threading.Event()
    running: list[str] = []
    done = threading.Semaphore(0)
    mutex = threading.Lock()
    busy = {"now": 0, "most": 0}

    def job() -> None:
        with mutex:
            busy["now"] += 1
            busy["most"] = max(busy["most"], busy["now"])
            running.append(threading.current_thread().name)
        assert gate.wait(30)
        with mutex:
            busy["now"] -= 1
        done.release()

    for _ in range(6):
        helpers.run(job)
    gate.set()
    for _ in range(6):
        assert done.acquire(timeout=30)
    assert busy["most"] <= 2  # never more threads than allowed
    assert len(running) == 6  # and every queued job ran


def test_without_a_limit_each_blocked_job_gets_its_own_helper() -> None:
    """Lock waits block until another job's release: a limit could deadlock them."""
    helpers = Helpers("test-helper")
    started = threading.Semaphore(0)
    gate = threading.Event()

    def job() -> None:
        started.release()
        assert gate.wait(30)

    for _ in range(5):
        helpers.run(job)
    for _ in range(5):
        assert started.acquire(timeout=30)  # all five run at once
    gate.set()


def test_a_failing_job_is_logged_and_its_helper_serves_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a thread limit, a helper that died of a job's error would stay counted, and
    the jobs after it would wait forever."""
    helpers = Helpers("test-helper", most=1)
    done = threading.Event()

    def failing() -> None:
        raise RuntimeError("a bug in a job")

    with caplog.at_level("ERROR", logger="sessionlock"):
        helpers.run(failing)
        helpers.run(done.set)
        assert done.wait(30)
    assert "a sessionlock helper job failed" in caplog.text
