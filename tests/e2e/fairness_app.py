"""A WSGI app for the fairness tests: a slow request the test releases, and fast ones.

    FAIRNESS_DIR=/tmp/x waitress-serve tests.e2e.fairness_app:wrapped_app
    gunicorn 'sessionlock.gunicorn:wrap("tests.e2e.fairness_app:app", key="cookie:sid")'

Routes (session = cookie ``sid``; ``tag`` names the request in the journal):
``GET /slow?tag=T`` waits inside the app until the file ``$FAIRNESS_DIR/release`` exists
(the test creates it), at most 60 s; ``GET /fast?tag=T`` answers at once. Each request
appends ``start T`` on entering the app and ``end T`` before answering to
``$FAIRNESS_DIR/journal``, one ``O_APPEND`` write per line, so the order of events across
threads and worker processes can be read back. ``wrapped_app`` is ``app`` in the WSGI
middleware (``key="cookie:sid"``, backend ``$FAIRNESS_BACKEND`` or ``memory://``,
``max_waiting_threads`` from ``$FAIRNESS_MAX_WAITING_THREADS`` when set).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

RELEASE = "release"
JOURNAL = "journal"
SLOW_LIMIT = 60.0


def _directory() -> Path:
    return Path(os.environ["FAIRNESS_DIR"])


def note(event: str, tag: str) -> None:
    fd = os.open(_directory() / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{event} {tag}\n".encode())
    finally:
        os.close(fd)


def read_journal(directory: Path) -> list[str]:
    path = directory / JOURNAL
    return path.read_text().splitlines() if path.exists() else []


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    tag = query.get("tag", "?")
    note("start", tag)
    if path == "/slow":
        gate, deadline = _directory() / RELEASE, time.monotonic() + SLOW_LIMIT
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # the app's slow work: it ends when the test says so
    body = json.dumps({"tag": tag, "pid": os.getpid()}).encode()
    note("end", tag)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _wrapped() -> Any:
    from sessionlock.wsgi import SessionLockMiddleware

    options: dict[str, Any] = {"key": "cookie:sid"}
    options["backend"] = os.environ.get("FAIRNESS_BACKEND", "memory://")
    cap = os.environ.get("FAIRNESS_MAX_WAITING_THREADS")
    if cap:
        options["max_waiting_threads"] = int(cap)
    return SessionLockMiddleware(app, **options)


def __getattr__(name: str) -> Any:
    if name == "wrapped_app":
        built = globals().get("_built")
        if built is None:
            built = globals()["_built"] = _wrapped()
        return built
    raise AttributeError(name)
