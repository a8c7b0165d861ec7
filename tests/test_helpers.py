"""The helper threads that wait on file locks and write cookie records for requests."""

from __future__ import annotations

import threading

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
