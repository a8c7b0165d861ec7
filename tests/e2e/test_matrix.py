"""The framework matrix: each framework on its own session layer, under its servers, with
and without the middleware (tox.ini runs one framework per environment; docs/matrix.md).

    .venv/bin/python -m pytest -q -s tests/e2e/test_matrix.py -k flask

Every (framework, server) runs the same four scenarios twice: ``locked`` (the README's setup:
the lock outside the session layer, the rules inside) must be right; ``bare`` (the same app
without either) is the control, shown to lose. Clients share one cookie jar per browser, as
a browser's tabs do: each request carries the jar as it is when sent, each response's
Set-Cookie is applied when it arrives.

- increments: N concurrent increments of one session's counter: none lost;
- two keys: two browsers increment at once: both counts right, and their requests meet
  inside the app (sessions do not wait for each other), while one session's cannot;
- logout: a logout while a longer request of the same session is in flight: the session
  stays cleared (for server-side sessions, in the store as well as in the browser);
- repair: a handler leaves ``idx`` past the end of ``items``: the rule repairs it before
  the session is saved.

A framework that is not installed is skipped (``pytest.importorskip``). The figures are
printed as ``MATRIX`` lines (``-s``) for docs/matrix.md.
"""

from __future__ import annotations

import importlib.metadata
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .servers import Jar, gunicorn, running_server, uvicorn, waitress

pytestmark = pytest.mark.e2e

INCREMENTS = 8  # concurrent increments of one session
PER_BROWSER = 4  # concurrent increments of each of two sessions
LOGOUT_ROUNDS = 3
TIMEOUT = 60.0

APPS = "tests.e2e.matrix."
GTHREAD = ("-k", "gthread", "--threads", "24")


def hypercorn(app: str) -> list[str]:
    return ["hypercorn", "--bind", "127.0.0.1:{port}", "--log-level", "warning", app]


def granian(app: str) -> list[str]:
    argv = ["granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}"]
    return [*argv, "--log-level", "warning", "--factory", app]


#: How each server is told to call a factory ``module:function`` of tests/e2e/matrix/.
SERVERS: dict[str, Callable[[str], list[str]]] = {
    "gunicorn": lambda app: gunicorn(f"{app}()", *GTHREAD),
    "waitress": lambda app: waitress(app, "--call", "--threads=24"),
    "uvicorn": lambda app: uvicorn(app, "--factory"),
    "hypercorn": lambda app: hypercorn(f"{app}()"),
    "granian": granian,
}
SERVER_MODULES = {"waitress": "waitress", "granian": "granian"}  # else the server's name


@dataclass(frozen=True)
class Case:
    framework: str  # as tox.ini names it
    server: str  # a key of SERVERS
    app: str  # module:factory under tests/e2e/matrix/
    needs: tuple[str, ...]  # importable modules; else the case is skipped
    server_side: bool = False  # the session lives in the server's store (logout checks it)

    @property
    def argv(self) -> list[str]:
        return SERVERS[self.server](APPS + self.app)

    @property
    def dist(self) -> str:  # the framework's distribution, for its version
        return self.framework.split("-")[0]


CASES = [
    Case("flask", "gunicorn", "wsgi_apps:flask_app", ("flask",)),
    Case("flask", "waitress", "wsgi_apps:flask_app", ("flask",)),
    Case("django-wsgi", "gunicorn", "django_app:wsgi", ("django",), server_side=True),
    Case("django-asgi", "uvicorn", "django_app:asgi", ("django",), server_side=True),
    Case("django-asgi", "hypercorn", "django_app:asgi", ("django",), server_side=True),
    Case("starlette", "uvicorn", "asgi_apps:starlette_app", ("starlette", "itsdangerous")),
    Case("starlette", "hypercorn", "asgi_apps:starlette_app", ("starlette", "itsdangerous")),
    Case("fastapi", "uvicorn", "fastapi_app:fastapi_app", ("fastapi", "itsdangerous")),
    Case("fastapi", "granian", "fastapi_app:fastapi_app", ("fastapi", "itsdangerous")),
    Case("quart", "hypercorn", "asgi_apps:quart_app", ("quart",)),
    Case("quart", "uvicorn", "asgi_apps:quart_app", ("quart",)),
    Case("falcon", "gunicorn", "wsgi_apps:falcon_app", ("falcon", "beaker"), server_side=True),
    Case("falcon", "waitress", "wsgi_apps:falcon_app", ("falcon", "beaker"), server_side=True),
    Case("bottle", "waitress", "wsgi_apps:bottle_app", ("bottle", "beaker"), server_side=True),
    Case("bottle", "gunicorn", "wsgi_apps:bottle_app", ("bottle", "beaker"), server_side=True),
    Case("pyramid", "waitress", "wsgi_apps:pyramid_app", ("pyramid",)),
    Case("pyramid", "gunicorn", "wsgi_apps:pyramid_app", ("pyramid",)),
    Case("litestar", "uvicorn", "asgi_apps:litestar_app", ("litestar",)),
    Case("litestar", "granian", "asgi_apps:litestar_app", ("litestar",)),
]


@dataclass
class Server:
    base: str
    case: Case
    mode: str
    version: str

    @property
    def locked(self) -> bool:
        return self.mode == "locked"

    def report(self, scenario: str, outcome: str) -> None:
        python = ".".join(map(str, sys.version_info[:2]))
        print(
            f"\nMATRIX {self.case.framework} {self.version} {self.case.server} py{python} "
            f"{self.mode} {scenario}: {outcome}"
        )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param((case, mode), id=f"{case.framework}-{case.server}-{mode}")
        for case in CASES
        for mode in ("locked", "bare")
    ],
)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    case, mode = request.param
    for module in (*case.needs, SERVER_MODULES.get(case.server, case.server)):
        pytest.importorskip(module)
    version = importlib.metadata.version(case.dist)
    with running_server(case.argv, env={"MATRIX_MODE": mode}) as (base, _):
        yield Server(base, case, mode, version)


# -- a browser -----------------------------------------------------------------------------


def send(base: str, path: str, cookies: dict[str, str], method: str = "POST") -> httpx.Response:
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return httpx.request(
        method, base + path, headers={"Cookie": header} if header else {}, timeout=TIMEOUT
    )


def call(base: str, jar: Jar, path: str, method: str = "POST") -> dict[str, Any]:
    response = send(base, path, jar.snapshot(), method)
    assert response.status_code == 200, (response.status_code, response.text)
    jar.apply(response)
    result: dict[str, Any] = response.json()
    return result


def concurrently(base: str, calls: list[tuple[Jar, str]]) -> list[httpx.Response]:
    """POST each (jar, path) at once, each carrying its jar as it is now; answers applied
    to the jar as they arrive."""
    sent = [(jar, path, jar.snapshot()) for jar, path in calls]
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def client(i: int, jar: Jar, path: str, cookies: dict[str, str]) -> None:
        try:
            barrier.wait(TIMEOUT)
            response = send(base, path, cookies)
            jar.apply(response)
            results[i] = response
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=client, args=(i, *call), daemon=True) for i, call in enumerate(sent)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert not errors, errors
    return results


def answers(responses: list[httpx.Response]) -> list[dict[str, Any]]:
    """The JSON answers, every one a 200."""
    assert [r.status_code for r in responses] == [200] * len(responses), [
        (r.status_code, r.text[:200]) for r in responses
    ]
    return [r.json() for r in responses]


def new_browser(base: str) -> Jar:
    """A jar whose session has begun (a server-side session has its id cookie by then)."""
    jar = Jar()
    assert call(base, jar, "/start")["started"] is True
    return jar


def state(base: str, jar: Jar) -> dict[str, Any]:
    return call(base, jar, "/state", "GET")


# -- scenarios -----------------------------------------------------------------------------


def test_increments_none_lost(server: Server) -> None:
    jar = new_browser(server.base)
    answers(concurrently(server.base, [(jar, "/incr")] * INCREMENTS))
    final = state(server.base, jar).get("n", 0)
    server.report("increments", f"{final} of {INCREMENTS} (lost {INCREMENTS - final})")
    if server.locked:
        assert final == INCREMENTS
    else:
        assert final < INCREMENTS


def test_two_keys_both_counts_right_and_no_wait(server: Server) -> None:
    first, second = new_browser(server.base), new_browser(server.base)
    answers(concurrently(server.base, [(jar, "/incr") for jar in (first, second)] * PER_BROWSER))
    counts = [state(server.base, jar).get("n", 0) for jar in (first, second)]
    lost = 2 * PER_BROWSER - sum(counts)
    server.report("two keys", f"{counts} of {PER_BROWSER} each (lost {lost})")
    if not server.locked:
        assert lost > 0
        return
    assert counts == [PER_BROWSER, PER_BROWSER]
    # Two sessions' requests meet inside the app: neither waits for the other.
    room = f"/meet?room={uuid.uuid4().hex}&n=2&timeout=30"
    met = answers(concurrently(server.base, [(first, room), (second, room)]))
    assert [answer["met"] for answer in met] == [True, True]
    # One session's two requests cannot: the second enters once the first gave up.
    room = f"/meet?room={uuid.uuid4().hex}&n=2&timeout=1"
    met = answers(concurrently(server.base, [(first, room), (first, room)]))
    assert sorted(answer["met"] for answer in met) == [False, True]


def test_logout_no_resurrection(server: Server) -> None:
    """Bare, a session layer either resurrects the session or (Django) refuses the request
    that saves over a deleted session (400, SessionInterrupted); locked, neither happens."""
    in_browser = in_store = refused = 0
    for _ in range(LOGOUT_ROUNDS):
        jar = new_browser(server.base)
        assert call(server.base, jar, "/login")["user"] == "alice"
        before_logout = Jar(jar.snapshot())
        sent = concurrently(server.base, [(jar, "/touch"), (jar, "/logout")])
        refused += sum(response.status_code != 200 for response in sent)
        in_browser += "user" in state(server.base, jar)
        if server.case.server_side:  # the old id must not find the session again either
            in_store += "user" in state(server.base, before_logout)
    where = ", in the store: " + str(in_store) if server.case.server_side else ""
    server.report(
        "logout",
        f"of {LOGOUT_ROUNDS} rounds, logged in after logout: in the browser {in_browser}"
        f"{where}; requests refused {refused}",
    )
    if server.locked:
        assert (in_browser, in_store, refused) == (0, 0, 0)
    else:
        assert in_browser + in_store + refused > 0


def test_repair_before_save(server: Server) -> None:
    jar = new_browser(server.base)
    response = send(server.base, "/corrupt", jar.snapshot())
    assert response.status_code == 200, response.text
    jar.apply(response)
    saved = state(server.base, jar)
    server.report("repair", f"idx {saved.get('idx')} of items {saved.get('items')}")
    assert saved["items"] == [1, 2, 3]
    if server.locked:
        assert saved["idx"] == 2
        assert response.headers["x-session-repaired"] == "index_within:idx"
    else:
        assert saved["idx"] == 7
        assert "x-session-repaired" not in response.headers
