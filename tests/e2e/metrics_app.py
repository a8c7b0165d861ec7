"""The app of tests/e2e/test_metrics_gunicorn.py: one session held while others queue.

    PROMETHEUS_MULTIPROC_DIR=/tmp/x/prom METRICS_TEST_GATE=/tmp/x/gate \
        gunicorn -w 2 -k gthread --threads 8 -c gunicorn.conf.py \
        'sessionlock.gunicorn:wrap("tests.e2e.metrics_app:app", metrics="prometheus", ...)'

Routes: ``/hold`` touches ``<gate>/inside`` (the test sees it is in), then stays in the app
until ``<gate>/leave`` exists; any other path answers at once; both answer the worker's pid.
``/metrics`` is prometheus_client's ``make_wsgi_app`` over a MultiProcessCollector (what
docs/metrics.md recommends), with the answering worker's pid in ``X-Worker``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

GATE = Path(os.environ.get("METRICS_TEST_GATE", "/nonexistent"))
HOLD_AT_MOST = 60.0  # liveness guard: the test always opens the gate long before

registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
metrics_app = make_wsgi_app(registry)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    worker = str(os.getpid())
    if path == "/metrics":

        def with_worker(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            return start_response(status, [*headers, ("X-Worker", worker)], *rest)

        return metrics_app(environ, with_worker)
    if path == "/hold":
        (GATE / "inside").touch()
        deadline = time.monotonic() + HOLD_AT_MOST
        while not (GATE / "leave").exists():  # the test's signal, from another process
            if time.monotonic() > deadline:
                raise RuntimeError("the gate was never opened")
            time.sleep(0.005)
    body = json.dumps({"pid": worker}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
