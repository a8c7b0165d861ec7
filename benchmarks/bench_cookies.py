"""The added cost of cookie tracking per request, on the memory and file backends.

    .venv/bin/python -m benchmarks.bench_cookies [--quick]

A Flask app with its default signed-cookie session, called in-process (a prepared environ,
the iterable consumed and closed), one client that keeps its cookie jar like a browser.
Three workloads: ``write`` (the handler changes the session: a Set-Cookie every response,
recorded), ``read`` (no Set-Cookie: the record is read and compared), ``stale`` (the request
carries an old cookie: the record is read, the Cookie header rewritten, Set-Cookie re-sent).
Variants, timed in interleaved batches round after round: bare Flask; the middleware without
``cookie_session``; with it; on ``memory://`` and ``file://``. Ratios are medians over rounds
of per-round ratios, so drift in machine load hits both sides alike.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import flask

from sessionlock.backends import from_url
from sessionlock.wsgi import SessionLockMiddleware

from ._table import median, parse_args, print_table

IDENTITY = "q" * 43  # a returning client: its identity cookie is already set


def make_app() -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "bench-secret-0123456789abcdef"

    @app.get("/write")
    def write() -> str:
        flask.session["n"] = flask.session.get("n", 0) + 1
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(flask.session.get("n", 0))

    return app


class Client:
    """Calls a WSGI app with a cookie jar it updates from each response."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.jar: dict[str, str] = {"sessionlock": IDENTITY}
        self.headers: list[tuple[str, str]] = []

    def _start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.headers = headers

    def get(self, path: str, jar: dict[str, str] | None = None) -> None:
        jar = self.jar if jar is None else jar
        environ = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_COOKIE": "; ".join(f"{k}={v}" for k, v in jar.items()),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        result = self.app(environ, self._start)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        for name, value in self.headers:
            if name == "Set-Cookie":
                key, _, rest = value.partition("=")
                jar[key] = rest.partition(";")[0]


def workload(client: Client, kind: str) -> Callable[[int], float]:
    """A timed batch of ``n`` requests of one workload; returns seconds."""
    client.get("/write")  # a session exists, and (if tracked) its record
    if kind == "stale":
        stale = dict(client.jar)
        client.get("/write")

        def batch(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                client.get("/read", dict(stale))
            return time.perf_counter() - start

        return batch
    path = "/write" if kind == "write" else "/read"

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            client.get(path)
        return time.perf_counter() - start

    return run


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, batch = (5, 200) if args.quick else (15, 1000)
    with tempfile.TemporaryDirectory() as directory:
        backends = {"memory": "memory://", "file": f"file://{directory}/locks"}
        rows = []
        for kind in ("write", "read", "stale"):
            variants: dict[str, Callable[[int], float]] = {}
            variants["bare"] = workload(Client(make_app().wsgi_app), kind)
            for name, url in backends.items():
                for tracked in (False, True):
                    options: dict[str, Any] = {"backend": from_url(url)}
                    # Tracking is on by default: the untracked variant turns it off.
                    options["cookie_session"] = "session" if tracked else None
                    app = SessionLockMiddleware(make_app().wsgi_app, **options)
                    label = f"{name}+cookies" if tracked else name
                    variants[label] = workload(Client(app), kind)
            for run in variants.values():  # warm up
                run(batch // 10)
            times: dict[str, list[float]] = {label: [] for label in variants}
            for _ in range(rounds):
                for label, run in variants.items():
                    times[label].append(run(batch) / batch)
            for name in backends:
                plain, tracked_times = times[name], times[f"{name}+cookies"]
                added = [t - p for t, p in zip(tracked_times, plain, strict=True)]
                rows.append(
                    [
                        kind,
                        name,
                        f"{median(times['bare']) * 1e6:.1f}",
                        f"{median(plain) * 1e6:.1f}",
                        f"{median(tracked_times) * 1e6:.1f}",
                        f"{median(added) * 1e6:.1f}",
                        _ratio(tracked_times, plain),
                        _ratio(tracked_times, times["bare"]),
                    ]
                )
    print(f"Flask default session, in-process, {rounds} rounds x {batch} requests; µs/request")
    print_table(
        [
            "workload",
            "backend",
            "bare",
            "lock",
            "lock+cookies",
            "added µs",
            "vs lock",
            "vs bare",
        ],
        rows,
    )


def _ratio(numerator: list[float], denominator: list[float]) -> str:
    return f"{median([n / d for n, d in zip(numerator, denominator, strict=True)]):.3f}x"


if __name__ == "__main__":
    main()
