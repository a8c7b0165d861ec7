"""Uncontended overhead: a minimal Flask and Starlette handler, bare vs wrapped.

    .venv/bin/python -m benchmarks.bench_overhead [--quick]

Each app is called in-process (WSGI: a prepared environ, the iterable consumed and closed;
ASGI: one event loop, no server), so the figures are the middleware's own cost with no
network in between. Variants are timed in interleaved batches, round after round, and the
ratio is the median over rounds of wrapped/bare within the same round, so drift in machine
load hits both sides alike. Target: wrapped/bare <= 1.05.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sessionlock import asgi, keys, wsgi

from ._table import measure, median, parse_args, print_table

TARGET = 1.05
SID = "3f2b9c1d8e7a6f5041322a1b0c9d8e7f"  # a Django-like session id
SECRET = "bench-overhead-secret-0123456789"  # every variant verifies the same identity
# A returning client: an identity cookie the middleware issued (signed), so none is issued.
_ISSUED = keys.identity().bind(keys.derive_secret(SECRET)).issue_for(False, "q" * 43)
IDENTITY = _ISSUED.partition(";")[0].partition("=")[2]
COOKIE = f"sid={SID}; sessionlock={IDENTITY}; theme=dark"
KEYS = {"cookie:sid": "cookie:sid", "identity (default)": "identity"}

Batch = Callable[[int], float]


# -- WSGI: Flask ------------------------------------------------------------------------------


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/")
    def index() -> str:
        return "ok"

    return app


def wsgi_batch(app: Callable[..., Iterable[bytes]]) -> Batch:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_COOKIE": COOKIE,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def run(n: int) -> float:
        copy = environ.copy
        start = time.perf_counter_ns()
        for _ in range(n):
            result = app(copy(), start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return (time.perf_counter_ns() - start) / n / 1000

    return run


# -- ASGI: Starlette --------------------------------------------------------------------------


def starlette_app() -> Starlette:
    async def index(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", index)])


def asgi_batch(app: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> Batch:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"cookie", COOKIE.encode())],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        pass

    async def batch(n: int) -> float:
        copy = scope.copy
        start = time.perf_counter_ns()
        for _ in range(n):
            await app(copy(), receive, send)
        return (time.perf_counter_ns() - start) / n / 1000

    def run(n: int) -> float:
        return loop.run_until_complete(batch(n))

    return run


# -- measurement ------------------------------------------------------------------------------


def rows_for(framework: str, times: dict[str, list[float]]) -> list[list[str]]:
    bare = times["bare"]
    rows = [[framework, "bare", f"{median(bare):.2f}", "1.000", ""]]
    for name, values in times.items():
        if name == "bare":
            continue
        ratio = median([w / b for w, b in zip(values, bare, strict=True)])
        verdict = "yes" if ratio <= TARGET else "NO"
        rows.append([framework, name, f"{median(values):.2f}", f"{ratio:.3f}", verdict])
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    rounds, n = (7, 1000) if args.quick else (21, 5000)

    flask = flask_app()
    wsgi_variants: dict[str, Batch] = {"bare": wsgi_batch(flask.wsgi_app)}
    for label, spec in KEYS.items():
        wrapped = wsgi.SessionLockMiddleware(
            flask.wsgi_app, key=spec, backend="memory://", secret=SECRET
        )
        wsgi_variants[f"wrapped, key={label}"] = wsgi_batch(wrapped)

    loop = asyncio.new_event_loop()
    star = starlette_app()
    asgi_variants: dict[str, Batch] = {"bare": asgi_batch(star, loop)}
    for label, spec in KEYS.items():
        wrapped_asgi = asgi.SessionLockMiddleware(
            star, key=spec, backend="memory://", secret=SECRET
        )
        asgi_variants[f"wrapped, key={label}"] = asgi_batch(wrapped_asgi, loop)

    print(f"uncontended overhead: {rounds} rounds x {n} requests per variant, medians")
    rows = rows_for("Flask (WSGI)", measure(wsgi_variants, rounds=rounds, n=n))
    rows += rows_for("Starlette (ASGI)", measure(asgi_variants, rounds=rounds, n=n))
    loop.close()
    headers = ["framework", "variant", "µs/request", "wrapped/bare", f"<= {TARGET}"]
    print_table(headers, rows)


if __name__ == "__main__":
    main()
