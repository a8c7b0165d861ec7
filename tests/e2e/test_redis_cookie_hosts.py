"""Signed-cookie sessions across two "hosts" behind one Redis: no update lost, none replayed.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_redis_cookie_hosts.py

The apps of cookie_apps.py (Flask's default cookie session on gunicorn gthread, Starlette's
SessionMiddleware on uvicorn), each run as two independent servers: separate processes,
ports and temporary directories, sharing only one redis-server (``redis://``). A browser
(one cookie jar, as in test_cookie_sessions.py) sends its requests alternately to the two
hosts, as a load balancer without affinity would. ``tracked`` (the middleware with no
option: it tracks the ``session`` cookie by default) must keep every update: (a) two keys set
at once, (b) N concurrent increments, (c) a logout on one host concurrent with a request on
the other stays logged out, (d) a stale cookie jar replayed is handed the latest cookie. The
control, ``bare`` (no middleware), loses updates in each. The hosts agree on the identity
cookie's signature through the secret the Redis backend stores once.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.redis_server import RedisServer

from .servers import Jar, gunicorn, running_server, uvicorn
from .test_cookie_sessions import INCREMENTS, LOGOUT_ROUNDS, TIMEOUT, call, request

pytestmark = pytest.mark.e2e

APPS = {
    "flask-gunicorn": gunicorn(
        "tests.e2e.cookie_apps:flask_app()", "-k", "gthread", "--threads", "16"
    ),
    "starlette-uvicorn": uvicorn("--factory", "tests.e2e.cookie_apps:starlette_app"),
}
CASES = [
    pytest.param((app, mode), id=f"{app}-{mode}") for app in APPS for mode in ("tracked", "bare")
]


class Hosts:
    def __init__(self, bases: list[str], name: str, mode: str) -> None:
        self.bases = bases
        self.name = name
        self.mode = mode

    def report(self, scenario: str, outcome: str) -> None:
        print(f"\nRESULT two hosts, {self.name} {self.mode} {scenario}: {outcome}")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module", params=CASES)
def hosts(request: pytest.FixtureRequest, redis: RedisServer) -> Iterator[Hosts]:
    name, mode = request.param
    with contextlib.ExitStack() as stack:
        bases = []
        for _ in range(2):  # two hosts: nothing shared but Redis
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            env = {
                "SL_COOKIE_MODE": mode,
                "SL_COOKIE_BACKEND": redis.url + "?lease_ttl=5",
                "TMPDIR": directory,
            }
            base, _ = stack.enter_context(running_server(APPS[name], env=env))
            bases.append(base)
        yield Hosts(bases, name, mode)


def new_browser(hosts: Hosts) -> Jar:
    """A fresh jar whose first request (to host A) established the middleware's identity."""
    jar = Jar()
    request(hosts.bases[0], jar, "GET", "/state")
    return jar


def across(hosts: Hosts, jar: Jar, paths: list[str]) -> None:
    """POST ``paths`` at once, all with the jar as it is now, alternately to host A and B."""
    cookies = jar.snapshot()
    barrier = threading.Barrier(len(paths))
    errors: list[BaseException] = []

    def client(i: int, path: str) -> None:
        try:
            barrier.wait(TIMEOUT)
            jar.apply(call(hosts.bases[i % 2], "POST", path, cookies))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i, p)) for i, p in enumerate(paths)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not errors, errors


def state(hosts: Hosts, jar: Jar, host: int = 1) -> dict[str, Any]:
    return request(hosts.bases[host], jar, "GET", "/state")


def test_a_two_keys_set_at_once_on_two_hosts_both_survive(hosts: Hosts) -> None:
    jar = new_browser(hosts)
    across(hosts, jar, ["/set?k=a&v=1", "/set?k=b&v=2"])
    final = state(hosts, jar)
    both = final.get("a") == "1" and final.get("b") == "2"
    hosts.report("(a) two keys", f"final={final} both_present={both}")
    assert both is (hosts.mode == "tracked"), final


def test_b_concurrent_increments_on_two_hosts_exact_count(hosts: Hosts) -> None:
    jar = new_browser(hosts)
    across(hosts, jar, ["/incr"] * INCREMENTS)
    final = state(hosts, jar).get("n")
    hosts.report("(b) increments", f"{final} of {INCREMENTS}")
    if hosts.mode == "tracked":
        assert final == INCREMENTS
    else:
        assert final is not None
        assert final < INCREMENTS


def test_c_a_logout_on_one_host_concurrent_with_a_request_on_the_other_stays_logged_out(
    hosts: Hosts,
) -> None:
    resurrected = 0
    for _ in range(LOGOUT_ROUNDS):
        jar = new_browser(hosts)
        assert request(hosts.bases[0], jar, "POST", "/login") == {"user": "alice"}
        across(hosts, jar, ["/touch", "/logout"])  # touch on host A, logout on host B
        resurrected += "user" in state(hosts, jar)
    hosts.report(
        "(c) logout", f"logged in again after logout in {resurrected} of {LOGOUT_ROUNDS} rounds"
    )
    if hosts.mode == "tracked":
        assert resurrected == 0
    else:
        assert resurrected > 0


def test_d_a_stale_jar_replayed_on_the_other_host_gets_the_latest_cookie(hosts: Hosts) -> None:
    a, b = hosts.bases
    jar = new_browser(hosts)
    assert request(a, jar, "POST", "/incr")["n"] == 1
    stale = Jar(jar.snapshot())  # the jar as it was then (an old tab, a restored backup)
    assert request(b, jar, "POST", "/incr")["n"] == 2
    replayed = request(a, stale, "POST", "/incr")["n"]
    final = state(hosts, jar)["n"]
    hosts.report(
        "(d) stale replay", f"replay's increment gave n={replayed}, final n={final} (right: 3)"
    )
    if hosts.mode == "tracked":
        assert (replayed, final) == (3, 3)
        assert stale.snapshot()["session"] == jar.snapshot()["session"]  # converged
    else:
        assert (replayed, final) == (2, 2)
