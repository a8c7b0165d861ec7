"""Real servers, real sockets: one session's concurrent increments, with and without the lock.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_counter_servers.py

N client threads, released together by a barrier, each send M increments with the same
``sid`` cookie to a counter whose read-modify-write spans a few milliseconds of work.
With the middleware every increment lands and the app never holds two requests of the
session at once; the same run against the bare app loses updates. Other sessions keep
running meanwhile: a rendezvous inside the app between two sessions' requests succeeds,
which it could not if their requests were serialized.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.apps import SessionStats, init_db, read_stats
from tests.e2e.servers import fetch, gunicorn, in_parallel, running_server, uvicorn, waitress

pytestmark = pytest.mark.e2e

CLIENTS = 4  # N client threads per session
INCREMENTS = 10  # M increments each
WSGI_APP = "tests.e2e.apps:wsgi_app"

SERVERS = [
    pytest.param(
        gunicorn(WSGI_APP, "--worker-class", "gthread", "--workers", "1", "--threads", "8"),
        id="gunicorn-gthread",
    ),
    pytest.param(waitress(WSGI_APP, "--threads=8"), id="waitress"),
    pytest.param(uvicorn("tests.e2e.apps:asgi_app"), id="uvicorn"),
]

Server = tuple[str, Path]  # base URL, counter database
StartServer = Callable[..., Server]  # (command, wrap, backend=None)


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Start each (command, wrapped, backend) server once for the module; all stop at its end."""
    started: dict[tuple[str, ...], Server] = {}
    with contextlib.ExitStack() as stack:

        def start(command: list[str], wrap: bool, backend: str | None = None) -> Server:
            key = (*command, str(wrap), str(backend))
            if key not in started:
                db = tmp_path_factory.mktemp("counter") / "counters.db"
                init_db(db)
                env = {"SESSIONLOCK_TEST_DB": str(db), "SESSIONLOCK_TEST_WRAP": str(int(wrap))}
                if backend is not None:
                    env["SESSIONLOCK_TEST_BACKEND"] = backend
                base_url, _ = stack.enter_context(running_server(command, env=env))
                started[key] = (base_url, db)
            return started[key]

        yield start


def request(base_url: str, method: str, path: str, sid: str) -> Any:
    """One request; the decoded JSON answer (status must be 200)."""
    status, body = fetch(base_url, method, path, sid)
    assert status == 200, (status, body)
    return body


def increments(base_url: str, sid: str) -> Callable[[], None]:
    def client() -> None:
        for _ in range(INCREMENTS):
            request(base_url, "POST", "/incr", sid)

    return client


def new_sid() -> str:
    return uuid.uuid4().hex


def report(what: str, command: list[str], stats: SessionStats) -> None:
    """The figures, for ``pytest -s`` (the issue's closing note quotes them)."""
    lost = CLIENTS * INCREMENTS - stats.count
    print(
        f"\n{Path(command[0]).name} {what}: sent {stats.requests}, count {stats.count}, "
        f"lost {lost}, max in flight {stats.max_inflight}"
    )


@pytest.mark.parametrize(
    "backend", [pytest.param(None, id="default-backend"), pytest.param("memory://", id="memory")]
)
@pytest.mark.parametrize("command", SERVERS)
def test_with_the_middleware_no_update_is_lost(
    start_server: StartServer, command: list[str], backend: str | None
) -> None:
    base_url, db = start_server(command, True, backend)
    sid = new_sid()
    in_parallel([increments(base_url, sid) for _ in range(CLIENTS)])
    stats = read_stats(db, sid)
    report(f"with middleware ({backend or 'default backend'})", command, stats)
    assert stats.requests == CLIENTS * INCREMENTS
    assert stats.count == CLIENTS * INCREMENTS
    assert stats.max_inflight == 1
    assert request(base_url, "GET", "/stats", sid)["count"] == CLIENTS * INCREMENTS


@pytest.mark.parametrize("command", SERVERS)
def test_without_the_middleware_updates_are_lost(
    start_server: StartServer, command: list[str]
) -> None:
    """The control: the very same run against the bare app."""
    base_url, db = start_server(command, False)
    sid = new_sid()
    in_parallel([increments(base_url, sid) for _ in range(CLIENTS)])
    stats = read_stats(db, sid)
    report("without middleware", command, stats)
    assert stats.requests == CLIENTS * INCREMENTS
    assert stats.count < CLIENTS * INCREMENTS
    assert stats.max_inflight > 1


@pytest.mark.parametrize("command", SERVERS)
def test_other_sessions_do_not_wait(start_server: StartServer, command: list[str]) -> None:
    base_url, db = start_server(command, True)
    first, second = new_sid(), new_sid()
    in_parallel([increments(base_url, sid) for sid in (first, second) for _ in range(CLIENTS)])
    for sid in (first, second):
        stats = read_stats(db, sid)
        assert (stats.count, stats.max_inflight) == (CLIENTS * INCREMENTS, 1)

    # Two sessions' requests meet inside the app: they are in flight at the same time.
    room = f"/meet?room={uuid.uuid4().hex}&n=2&timeout=30"
    met = in_parallel(
        [lambda sid=sid: request(base_url, "GET", room, sid) for sid in (first, second)]
    )
    assert [answer["met"] for answer in met] == [True, True]
    assert read_stats(db, None).max_inflight >= 2

    # The control: two requests of one session cannot meet; the second enters when the
    # first has given up waiting.
    room = f"/meet?room={uuid.uuid4().hex}&n=2&timeout=1"
    met = in_parallel([lambda: request(base_url, "GET", room, first)] * 2)
    assert sorted(answer["met"] for answer in met) == [False, True]
