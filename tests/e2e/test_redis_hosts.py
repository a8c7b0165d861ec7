"""Two "hosts" behind one Redis: one session's concurrent increments spread over both.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_redis_hosts.py

Host A is gunicorn (gthread, WSGI), host B is uvicorn (ASGI): separate processes on separate
ports, each with a temporary directory of its own (no lock file can be shared), both on
``redis://`` to one real redis-server. They share only what two hosts of an app would: the
app's database (the counter) and Redis. Clients send each increment alternately to A and B.
With the middleware every increment lands and no two requests of the session are ever in
the app at once; the control, the same run on the bare apps, loses updates.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.apps import init_db, read_stats
from tests.e2e.servers import fetch, gunicorn, in_parallel, running_server, uvicorn
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

CLIENTS = 4
INCREMENTS = 10
HOSTS = [
    gunicorn("tests.e2e.apps:wsgi_app", "--worker-class", "gthread", "--threads", "8"),
    uvicorn("tests.e2e.apps:asgi_app"),
]

Hosts = Callable[[bool], tuple[list[str], Path]]  # wrapped? -> (base URLs, counter db)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """Start the two hosts once per (wrapped or not) for the module, on one redis-server."""
    server = RedisServer()
    started: dict[bool, tuple[list[str], Path]] = {}
    with contextlib.ExitStack() as stack:
        server.start()
        stack.callback(server.close)

        def start(wrap: bool) -> tuple[list[str], Path]:
            if wrap not in started:
                db = tmp_path_factory.mktemp("counter") / "counters.db"
                init_db(db)
                urls = []
                for command in HOSTS:
                    env = {
                        "SESSIONLOCK_TEST_DB": str(db),
                        "SESSIONLOCK_TEST_WRAP": str(int(wrap)),
                        "SESSIONLOCK_TEST_BACKEND": server.url + "?lease_ttl=5",
                        "TMPDIR": str(tmp_path_factory.mktemp("host")),  # nothing shared
                    }
                    url, _ = stack.enter_context(running_server(command, env=env))
                    urls.append(url)
                started[wrap] = (urls, db)
            return started[wrap]

        yield start


def _client(urls: list[str], sid: str, first: int) -> Callable[[], None]:
    def run() -> None:
        for number in range(INCREMENTS):
            status, body = fetch(urls[(first + number) % 2], "POST", "/incr", sid)
            assert status == 200, (status, body)

    return run


def _run(hosts: Hosts, wrap: bool) -> tuple[int, int, int]:
    urls, db = hosts(wrap)
    sid = uuid.uuid4().hex
    in_parallel([_client(urls, sid, n) for n in range(CLIENTS)])
    stats = read_stats(db, sid)
    print(  # for pytest -s: the closing note quotes it
        f"\ntwo hosts {'with' if wrap else 'without'} the middleware: sent {stats.requests},"
        f" count {stats.count}, max in flight {stats.max_inflight}"
    )
    return stats.requests, stats.count, stats.max_inflight


def test_two_hosts_on_one_redis_lose_no_update(hosts: Hosts) -> None:
    assert _run(hosts, True) == (CLIENTS * INCREMENTS, CLIENTS * INCREMENTS, 1)


def test_control_two_hosts_without_the_middleware_lose_updates(hosts: Hosts) -> None:
    requests, count, most = _run(hosts, False)
    assert requests == CLIENTS * INCREMENTS
    assert count < CLIENTS * INCREMENTS
    assert most > 1
