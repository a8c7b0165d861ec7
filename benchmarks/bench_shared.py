"""Shared reads: a page's 8 parallel GETs of one session, bare vs exclusive vs shared.

    .venv/bin/python -m benchmarks.bench_shared            # about 1 minute
    .venv/bin/python -m benchmarks.bench_shared --quick    # about 15 s: checks that it works

Part 1, real servers. One browser (its jar: the app's ``session`` cookie and the
``sessionlock`` identity from a first ``POST /init``) loads a page that fires 8 GETs of its
session at once, on 8 warm keep-alive connections (one client thread each); each GET's
handler reads the session and works 20 ms (``asyncio.sleep`` in Starlette under uvicorn, 1
worker; ``time.sleep`` in Flask under gunicorn gthread, 2 workers x 8 threads). The page's
wall time runs from the moment the 8 client threads are let go to the last answer read.
Variants, each its own server, all running at once: bare (no middleware), wrapped with the
defaults (every request exclusive: the 8 GETs run one after another) and wrapped with
``shared=["GET"]``; wrapped servers on ``file://`` (a fresh directory each). Pages of the
variants alternate in a rotating order, round after round; figures are medians over pages.
Target: shared within 1.2x of bare.

Part 2, in process: the hand-off between readers and writers in the in-process queue
(``KeyedQueue``, thread waiters; and the whole ``Core.enter/leave`` over ``memory://``): the
time from the holder's release to the next holder running, p50 and p99 over thousands of
samples, with the waiters already blocked. reader->writer: a reader holds, a writer waits;
writer->reader: a writer holds, a reader waits; writer->4 readers: 4 readers wait, all woken
by the one release (the time until the last of them runs). Compared with the exclusive
hand-off (writer->writer) of the same path, measured interleaved with them, and with a raw
``threading.Lock`` hand-off. Target: reader->writer and writer->reader p50 within 1.5x of the
exclusive hand-off.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from ._figures import Figure, print_figures
from ._servers import running
from ._table import median, parse_args, percentile, print_table

READERS = 8  # the page's parallel GETs
WORK = 0.020  # seconds of work per GET
TARGET = 1.2  # page wall time, shared / bare
HANDOFF_TARGET = 1.5  # p50 of a reader/writer hand-off / p50 of the exclusive one
MODE_ENV = "SESSIONLOCK_BENCH_SHARED"  # bare, exclusive or shared: what the factories build
BACKEND_ENV = "SESSIONLOCK_BENCH_SHARED_BACKEND"
SECRET = "bench-shared-secret-0123456789abcdef"
VARIANTS = ("bare", "exclusive", "shared")

# -- the apps the servers run -------------------------------------------------------------------


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"backend": os.environ[BACKEND_ENV]}
    if os.environ[MODE_ENV] == "shared":
        options["shared"] = ["GET"]
    return options


def starlette_app() -> Any:
    """``uvicorn --factory benchmarks.bench_shared:starlette_app``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def init(request: Request) -> JSONResponse:
        request.session["n"] = 1
        return JSONResponse({"n": 1})

    async def data(request: Request) -> JSONResponse:
        n = request.session.get("n")
        await asyncio.sleep(WORK)  # a query, a call to another service
        return JSONResponse({"n": n})

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    if os.environ[MODE_ENV] != "bare":
        from sessionlock.asgi import SessionLockMiddleware

        middleware.insert(0, Middleware(SessionLockMiddleware, **_options()))  # outermost
    routes = [Route("/init", init, methods=["POST"]), Route("/data", data)]
    return Starlette(routes=routes, middleware=middleware)


def flask_app() -> Any:
    """``gunicorn 'benchmarks.bench_shared:flask_app()'``."""
    import flask

    app = flask.Flask(__name__)
    app.secret_key = SECRET

    @app.post("/init")
    def init() -> flask.Response:
        flask.session["n"] = 1
        return flask.jsonify(n=1)

    @app.get("/data")
    def data() -> flask.Response:
        n = flask.session.get("n")
        time.sleep(WORK)  # a query, a call to another service
        return flask.jsonify(n=n)

    if os.environ[MODE_ENV] != "bare":
        from sessionlock.flask import SessionLock

        SessionLock(app, **_options())
    return app


SERVERS: dict[str, list[str]] = {
    "uvicorn 1 worker, Starlette": [
        *("uvicorn", "--factory", "benchmarks.bench_shared:starlette_app"),
        *("--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"),
        # As gunicorn's --keep-alive below: a variant's connections idle while the others
        # run must not be closed (uvicorn's default is 5 s; a slow round passed it).
        *("--no-access-log", "--timeout-keep-alive", "300"),
    ],
    "gunicorn gthread 2x8, Flask": [
        *("gunicorn", "--bind", "127.0.0.1:{port}", "--log-level", "warning"),
        *("-w", "2", "-k", "gthread", "--threads", "8", "--keep-alive", "300"),
        "benchmarks.bench_shared:flask_app()",
    ],
}

# -- the browser --------------------------------------------------------------------------------


class Browser:
    """One browser on one server: its jar and 8 keep-alive connections, one thread each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.refused = 0  # answers that were not 200
        self.lock = threading.Lock()
        self.conns = [self._connect() for _ in range(READERS)]
        self.go = threading.Barrier(READERS + 1)
        self.done = threading.Barrier(READERS + 1)
        self.stop = False
        self.threads = [
            threading.Thread(target=self._client, args=(c,), daemon=True) for c in self.conns
        ]
        for thread in self.threads:
            thread.start()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def _header(self) -> dict[str, str]:
        with self.lock:
            return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def request(self, conn: http.client.HTTPConnection, method: str, path: str) -> int:
        conn.request(method, path, headers=self._header())
        response = conn.getresponse()
        response.read()
        for header in response.headers.get_all("Set-Cookie") or ():
            with self.lock:
                for name, morsel in SimpleCookie(header).items():
                    self.cookies[name] = morsel.value
        return response.status

    def login(self) -> None:
        """``POST /init``: the session exists, and (wrapped) the identity is issued."""
        conn = self._connect()
        try:
            assert self.request(conn, "POST", "/init") == 200
        finally:
            conn.close()

    def _client(self, conn: http.client.HTTPConnection) -> None:
        while True:
            self.go.wait()
            if self.stop:
                return
            try:
                ok = self.request(conn, "GET", "/data") == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()  # http.client reconnects on the next request
            if not ok:
                with self.lock:
                    self.refused += 1
            self.done.wait()

    def page(self) -> float:
        """One page: the 8 GETs at once; its wall time in ms."""
        start = time.perf_counter()
        self.go.wait()
        self.done.wait()
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.stop = True
        self.go.wait()
        for thread in self.threads:
            thread.join(30)
        for conn in self.conns:
            conn.close()


@contextmanager
def browsers() -> Iterator[dict[tuple[str, str], Browser]]:
    """Every (server, variant) running, each with its browser logged in."""
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as scratch:
        base = Path(scratch)
        (base / "logs").mkdir()
        commands = {}
        for server, argv in SERVERS.items():
            for variant in VARIANTS:
                env = {MODE_ENV: variant, BACKEND_ENV: f"file://{base / (server[:7] + variant)}"}
                commands[f"{server} {variant}"] = (argv, env)
        with running(commands, base / "logs") as servers:
            made: dict[tuple[str, str], Browser] = {}
            try:
                for server in SERVERS:
                    for variant in VARIANTS:
                        browser = Browser(servers[f"{server} {variant}"].port)
                        made[server, variant] = browser
                        browser.login()
                        for _ in range(2):  # warm: imports, connections, lock files
                            browser.page()
                yield made
            finally:
                for browser in made.values():
                    browser.close()


def measure_pages(quick: bool) -> dict[tuple[str, str], list[float]]:
    """Page wall times (ms) per (server, variant), variants interleaved."""
    rounds, pages = (3, 3) if quick else (6, 8)
    times: dict[tuple[str, str], list[float]] = {}
    with browsers() as made:
        for r in range(rounds):
            for server in SERVERS:
                for i in range(len(VARIANTS)):
                    variant = VARIANTS[(r + i) % len(VARIANTS)]
                    browser = made[server, variant]
                    samples = times.setdefault((server, variant), [])
                    samples.extend(browser.page() for _ in range(pages))
        for (server, variant), browser in made.items():
            if browser.refused:
                raise RuntimeError(f"{server} {variant}: {browser.refused} answers not 200")
    return times


# -- part 2: hand-off in process ----------------------------------------------------------------


class Holding:
    """A way to hold the key: ``hold(shared)`` blocks until held, ``let_go(shared)``."""

    def hold(self, shared: bool) -> Any:
        raise NotImplementedError

    def let_go(self, token: Any, shared: bool) -> None:
        raise NotImplementedError

    def waiting(self) -> int:
        raise NotImplementedError


class QueueHolding(Holding):
    """``KeyedQueue.acquire/release``: the in-process line itself."""

    def __init__(self) -> None:
        from sessionlock.queue import KeyedQueue

        self.queue = KeyedQueue()

    def hold(self, shared: bool) -> Any:
        self.queue.acquire("k", timeout=25.0, max_waiters=16, shared=shared)

    def let_go(self, token: Any, shared: bool) -> None:
        self.queue.release("k", shared=shared)

    def waiting(self) -> int:
        return self.queue.waiting("k")


class CoreHolding(Holding):
    """``Core.enter/leave`` over ``memory://``: GETs shared, POSTs exclusive."""

    def __init__(self) -> None:
        from sessionlock.core import Core

        self.core = Core(backend="memory://", key="cookie:sid", shared=["GET"])
        probe = self.core.admit(self._environ(False))
        assert probe is not None
        self.key = probe.key

    @staticmethod
    def _environ(shared: bool) -> dict[str, str]:
        method = "GET" if shared else "POST"
        return {"REQUEST_METHOD": method, "PATH_INFO": "/", "HTTP_COOKIE": "sid=s"}

    def hold(self, shared: bool) -> Any:
        admission = self.core.admit(self._environ(shared))
        assert admission is not None
        assert admission.shared == shared
        self.core.enter(admission)
        return admission

    def let_go(self, token: Any, shared: bool) -> None:
        self.core.leave(token)

    def waiting(self) -> int:
        return self.core.queue.waiting(self.key)


class RawHolding(Holding):
    """A raw ``threading.Lock`` handed from one thread to another (exclusive only)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocked = 0

    def hold(self, shared: bool) -> Any:
        self.blocked += 1  # only ever one waiter: good enough to know it is on its way
        self.lock.acquire()
        self.blocked -= 1

    def let_go(self, token: Any, shared: bool) -> None:
        self.lock.release()

    def waiting(self) -> int:
        return self.blocked


# (name, holder shared?, waiters shared?, waiters)
HANDOFFS = [
    ("writer->writer", False, False, 1),
    ("reader->writer", True, False, 1),
    ("writer->reader", False, True, 1),
    ("writer->4 readers", False, True, 4),
]


class Waiters:
    """Threads that wait for the key on request and report when they got it."""

    def __init__(self, count: int) -> None:
        self.jobs: list[queue.SimpleQueue[tuple[Holding, bool] | None]] = [
            queue.SimpleQueue() for _ in range(count)
        ]
        self.woke: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._run, args=(jobs,), daemon=True) for jobs in self.jobs
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, jobs: queue.SimpleQueue[tuple[Holding, bool] | None]) -> None:
        while (job := jobs.get()) is not None:
            path, shared = job
            token = path.hold(shared)
            woke = time.perf_counter_ns()
            path.let_go(token, shared)
            self.woke.put(woke)

    def sample(self, path: Holding, holder: bool, shared: bool, count: int) -> tuple[float, float]:
        """One hand-off: µs from the release to the first and to the last waiter running."""
        token = path.hold(holder)
        for i in range(count):
            self.jobs[i].put((path, shared))
        while path.waiting() < count:  # each is in line
            time.sleep(0)
        time.sleep(0.0005)  # and has reached its blocking call
        released = time.perf_counter_ns()
        path.let_go(token, holder)
        woke = sorted(self.woke.get() for _ in range(count))
        return (woke[0] - released) / 1000, (woke[-1] - released) / 1000

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for thread in self.threads:
            thread.join(30)


def measure_handoffs(quick: bool) -> dict[tuple[str, str], list[float]]:
    """µs per (path, hand-off) (the last waiter's), interleaved; raw: (raw, writer->writer)."""
    samples = 300 if quick else 2000
    paths: dict[str, Holding] = {"KeyedQueue": QueueHolding(), "Core (memory://)": CoreHolding()}
    cases: list[tuple[str, Holding, str, bool, bool, int]] = [
        (name, path, h, holder, shared, n)
        for name, path in paths.items()
        for h, holder, shared, n in HANDOFFS
    ]
    cases.append(("raw threading.Lock", RawHolding(), "writer->writer", False, False, 1))
    waiters = Waiters(max(n for *_, n in HANDOFFS))
    results: dict[tuple[str, str], list[float]] = {(c[0], c[2]): [] for c in cases}
    try:
        for i in range(samples + samples // 10):
            for j in range(len(cases)):
                name, path, handoff, holder, shared, n = cases[(i + j) % len(cases)]
                _, last = waiters.sample(path, holder, shared, n)
                if i >= samples // 10:  # the first tenth warms up
                    results[name, handoff].append(last)
    finally:
        waiters.close()
    return results


# -- figures ------------------------------------------------------------------------------------


def figures_from(
    pages: dict[tuple[str, str], list[float]], handoffs: dict[tuple[str, str], list[float]]
) -> list[Figure]:
    out = []
    for server in SERVERS:
        bare = median(pages[server, "bare"])
        shared = median(pages[server, "shared"])
        exclusive = median(pages[server, "exclusive"])
        out.append(
            Figure(
                f"page of {READERS} parallel GETs of one session ({WORK * 1000:g} ms each),"
                f" {server}, file://: shared / bare",
                f"{shared / bare:.2f}x ({shared:.1f} ms)",
                f"bare {bare:.1f} ms; exclusive {exclusive:.1f} ms ({exclusive / bare:.2f}x)",
                f"<= {TARGET:g}x",
                shared / bare <= TARGET,
            )
        )
    for path in ("KeyedQueue", "Core (memory://)"):
        base = handoffs[path, "writer->writer"]
        b50, b99 = median(base), percentile(base, 99)
        parts, met = [], True
        for handoff in ("reader->writer", "writer->reader"):
            mine = handoffs[path, handoff]
            p50, p99 = median(mine), percentile(mine, 99)
            parts.append(f"{handoff} p50 {p50:.1f} µs ({p50 / b50:.2f}x), p99 {p99:.1f} µs")
            met = met and p50 / b50 <= HANDOFF_TARGET
        out.append(
            Figure(
                f"in-process hand-off, threads, {path}: reader->writer, writer->reader",
                "; ".join(parts),
                f"exclusive writer->writer p50 {b50:.1f}, p99 {b99:.1f} µs",
                f"p50 <= {HANDOFF_TARGET:g}x exclusive",
                met,
            )
        )
    return out


def figures(quick: bool) -> list[Figure]:
    return figures_from(measure_pages(quick), measure_handoffs(quick))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    pages = measure_pages(args.quick)
    handoffs = measure_handoffs(args.quick)
    count = len(next(iter(pages.values())))
    print(
        f"part 1: a page of {READERS} parallel GETs of one session, {WORK * 1000:g} ms each,"
        f" file://; {count} pages per variant"
    )
    rows: list[list[str]] = []
    for server in SERVERS:
        bare = median(pages[server, "bare"])
        for variant in VARIANTS:
            mine = pages[server, variant]
            rows.append(
                [
                    server,
                    variant,
                    f"{median(mine):.1f}",
                    f"{percentile(mine, 90):.1f}",
                    f"{median(mine) / bare:.2f}",
                ]
            )
    print_table(["server", "variant", "page p50 ms", "page p90 ms", "p50 / bare"], rows)
    print()
    count = len(next(iter(handoffs.values())))
    print(f"part 2: in-process hand-off, release -> next holder running; {count} samples each")
    rows = []
    for (path, handoff), mine in handoffs.items():
        base = handoffs.get((path, "writer->writer"), mine)
        p50, p99 = median(mine), percentile(mine, 99)
        ratio = f"{p50 / median(base):.2f}"
        rows.append([path, handoff, f"{p50:.1f}", f"{p99:.1f}", ratio])
    headers = ["path", "hand-off (last waiter)", "p50 µs", "p99 µs", "p50 / writer->writer"]
    print_table(headers, rows)
    print()
    print_figures(figures_from(pages, handoffs))


if __name__ == "__main__":
    main()
