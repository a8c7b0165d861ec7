"""Prometheus metrics under gunicorn's worker processes: one scrape sums every worker.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_metrics_gunicorn.py

gunicorn runs :mod:`tests.e2e.metrics_app` with 2 gthread workers, wrapped by the factory
form with ``metrics="prometheus"``, ``PROMETHEUS_MULTIPROC_DIR`` on a fresh directory and the
``child_exit`` hook of docs/metrics.md. One request of a session is held in the app while
WAITERS more of the same session arrive: they wait (in the holder's worker's queue, or for
the file lock in the other worker). The waiters gauge, summed across the workers, reaches
WAITERS; once the holder is let go, every request is served, each waiter's wait is
observed, and a scrape answered by either worker reports them all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.servers import fetch, fetch_with_headers, gunicorn, running_server

pytestmark = pytest.mark.e2e

APP = "tests.e2e.metrics_app:app"
SID = "metrics-e2e-session-0123456789"
WAITERS = 4
DEADLINE = 60.0  # liveness guard of the polls below; never reached when the code is right
SCRAPES = 400  # scrapes tried until both workers have answered one

CONFIG = """\
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


def scrape(url: str) -> tuple[str, dict[str, float]]:
    """The answering worker's pid and the sessionlock samples of one ``/metrics`` scrape."""
    status, headers, body = fetch_with_headers(url, "GET", "/metrics", "none")
    assert status == 200, body
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("sessionlock_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
    return headers["x-worker"], samples


def booted(prom: Path, workers: int = 2) -> bool:
    """Whether ``workers`` processes have made and sized their metric files.

    A scrape while a worker is making its files can meet one at 0 bytes and fail whole
    (prometheus/client_python#1199): the test scrapes once the workers are up.
    """
    kinds = ("counter", "histogram", "gauge_livesum")
    files = [f for f in prom.glob("*.db") if f.stat().st_size > 0]
    pids = {f.stem.rpartition("_")[2] for f in files}
    sized = {f.stem for f in files}
    ready = [pid for pid in pids if all(f"{kind}_{pid}" in sized for kind in kinds)]
    return len(ready) >= workers


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll for what other processes bring about (no event crosses to this process)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def test_one_scrape_sums_the_workers_waits_and_requests(tmp_path: Path) -> None:
    gate, prom = tmp_path / "gate", tmp_path / "prom"
    gate.mkdir()
    prom.mkdir()
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(CONFIG)
    wrapped = (
        f"sessionlock.gunicorn:wrap({APP!r}, backend='file://{tmp_path / 'locks'}',"
        " key='cookie:sid', exempt=['/metrics'], metrics='prometheus', max_waiting_threads=16)"
    )
    command = gunicorn(
        wrapped, "--workers", "2", "--worker-class", "gthread", "--threads", "8", "-c", str(config)
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom), "METRICS_TEST_GATE": str(gate)}
    with running_server(command, env=env) as (url, _):
        until(lambda: booted(prom), "both workers up, their metric files made")
        results: list[Any] = []
        lock = threading.Lock()

        def request(path: str) -> None:
            answer = fetch(url, "GET", path, SID)
            with lock:
                results.append(answer)

        threads = [threading.Thread(target=request, args=("/hold",), daemon=True)]
        threads[0].start()
        try:
            until((gate / "inside").exists, "the holder in the app")
            for _ in range(WAITERS):
                thread = threading.Thread(target=request, args=("/work",), daemon=True)
                thread.start()
                threads.append(thread)
            waiting = "sessionlock_waiting{}"
            until(lambda: scrape(url)[1].get(waiting) == WAITERS, f"{WAITERS} waiters")
        finally:
            (gate / "leave").touch()
            for thread in threads:
                thread.join(DEADLINE)
        assert [status for status, _ in results] == [200] * (WAITERS + 1)
        served_by = {body["pid"] for _, body in results}

        answers: dict[str, dict[str, float]] = {}
        for _ in range(SCRAPES):  # until each worker has answered a scrape
            worker, samples = scrape(url)
            answers[worker] = samples
            if len(answers) == 2:
                break
    assert len(answers) == 2, f"only worker {list(answers)} answered {SCRAPES} scrapes"
    first, second = answers.values()
    assert first == second  # either worker reports every worker's requests
    assert first["sessionlock_requests_total{outcome=served}"] == WAITERS + 1
    assert first["sessionlock_wait_seconds_count{}"] == WAITERS
    assert first["sessionlock_wait_seconds_sum{}"] > 0
    assert first["sessionlock_waiting{}"] == 0
    assert first.get("sessionlock_requests_total{outcome=timeout}", 0) == 0
    assert first.get("sessionlock_requests_total{outcome=queue_full}", 0) == 0
    print(f"served by workers {sorted(served_by)}; scrape:", *sorted(first.items()), sep="\n")
