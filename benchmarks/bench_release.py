"""The next request's wait: a session's next request behind a background task or a stream.

    .venv/bin/python -m benchmarks.bench_release [--quick]

A user's request returns its page, and the server still works for it: (a) a 1 s Starlette
``BackgroundTask`` after the response, under uvicorn; (b) a Starlette ``StreamingResponse``
that streams for 1 s, under uvicorn, the next request sent once the head and first chunk
have arrived; (c) the same stream from Flask under gunicorn (gthread). We time the user's
next request of the same session (the client sends back the ``sessionlock`` identity cookie
the first response set), from sending it to its last byte. Variants: bare (no middleware),
wrapped with the default (``release="head"``: the lock goes with the response head) and
wrapped with ``release="end"`` (held through the body and the background task: the old
behaviour), each served by its own real server in a subprocess on a free loopback port, all
running at once. Variants are interleaved round after round in a rotating order, figures
are medians, and the ratio is the median over rounds of wrapped/bare in the same round.
Target: wrapped with the default adds at most 5 ms to bare (no wait behind the previous
request; the requests take a millisecond or two on loopback, so their ratio is noisy).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import flask
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from sessionlock import asgi, wsgi
from sessionlock.core import Core

from ._servers import free_port, stop, wait_listening
from ._table import median, parse_args, print_table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET_MS = 5.0  # wrapped (default) - bare, ms: the next request does not wait
VARIANT_ENV = "SESSIONLOCK_BENCH_RELEASE"  # which app the server's factory builds
CHUNKS = 10  # a stream sends its first chunk at once, then one every duration / CHUNKS
SETTLE_LIMIT = 30.0  # seconds the server waits at most for a background task to finish

# -- the apps the servers run -----------------------------------------------------------------

_finished: set[str] = set()  # tokens of background tasks that have run to their end


def _seconds(value: str | None) -> float:
    return min(max(float(value or 0.1), 0.0), 5.0)


async def _background(token: str, seconds: float) -> None:
    await asyncio.sleep(seconds)
    _finished.add(token)


async def _bg(request: Request) -> Response:
    task = BackgroundTask(
        _background, request.query_params["token"], _seconds(request.query_params.get("s"))
    )
    return PlainTextResponse("page\n", background=task)


async def _stream(request: Request) -> Response:
    seconds = _seconds(request.query_params.get("s"))

    async def chunks() -> Any:
        yield b"chunk 0\n"
        for number in range(1, CHUNKS + 1):
            await asyncio.sleep(seconds / CHUNKS)
            yield f"chunk {number}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def _next(request: Request) -> Response:
    return PlainTextResponse("next\n")


async def _settled(request: Request) -> Response:
    """Answers once the background task ``token`` has finished (asked outside the session)."""
    token, deadline = request.query_params["token"], time.monotonic() + SETTLE_LIMIT
    while token not in _finished:
        if time.monotonic() > deadline:
            return PlainTextResponse("still running\n", status_code=504)
        await asyncio.sleep(0.002)
    _finished.discard(token)
    return PlainTextResponse("done\n")


def _options() -> dict[str, Any]:
    variant = os.environ.get(VARIANT_ENV, "bare")
    options: dict[str, Any] = {"backend": "memory://"}  # one worker process: one lock table
    if variant == "end":
        options["release"] = "end"
    return options


def asgi_app() -> Any:
    """uvicorn ``--factory``: the Starlette app, wrapped as ``$SESSIONLOCK_BENCH_RELEASE`` says."""
    routes = [
        Route("/bg", _bg),
        Route("/stream", _stream),
        Route("/next", _next),
        Route("/settled", _settled),
    ]
    app = Starlette(routes=routes)
    if os.environ.get(VARIANT_ENV, "bare") == "bare":
        return app
    return asgi.SessionLockMiddleware(app, **_options())


def wsgi_app() -> Any:
    """gunicorn ``wsgi_app()``: the Flask app, wrapped as ``$SESSIONLOCK_BENCH_RELEASE`` says."""
    app = flask.Flask(__name__)

    @app.get("/stream")
    def stream() -> flask.Response:
        seconds = _seconds(flask.request.args.get("s"))

        def chunks() -> Iterator[bytes]:
            yield b"chunk 0\n"
            for number in range(1, CHUNKS + 1):
                time.sleep(seconds / CHUNKS)
                yield f"chunk {number}\n".encode()

        return flask.Response(chunks(), mimetype="text/plain")

    @app.get("/next")
    def next_page() -> str:
        return "next\n"

    if os.environ.get(VARIANT_ENV, "bare") == "bare":
        return app
    app.wsgi_app = wsgi.SessionLockMiddleware(app.wsgi_app, **_options())  # type: ignore[method-assign]
    return app


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    variant: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


def _start(kind: str, variant: str, logs: Path) -> Server:
    port = free_port()
    if kind == "uvicorn":
        command = [str(BIN / "uvicorn"), "--factory", "benchmarks.bench_release:asgi_app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        command += ["--no-access-log"]
    else:
        command = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1"]
        command += ["--worker-class", "gthread", "--threads", "4", "--log-level", "warning"]
        command += ["--no-control-socket", "--graceful-timeout", "5"]
        command += ["benchmarks.bench_release:wsgi_app()"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), VARIANT_ENV: variant}
    log = logs / f"{kind}-{variant}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(kind, variant, port, process, log)


@contextlib.contextmanager
def running(kinds: list[str], variants: list[str]) -> Iterator[dict[tuple[str, str], Server]]:
    """All servers at once, each stopped at the end of the block (even on error)."""
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
        servers: dict[tuple[str, str], Server] = {}
        for kind in kinds:
            for variant in variants:
                server = _start(kind, variant, Path(logs))
                stack.callback(stop, server.process)
                servers[kind, variant] = server
        deadline = time.monotonic() + 60
        for server in servers.values():
            name = f"{server.name} ({server.variant})"
            wait_listening(server.process, server.port, server.log, name, deadline)
        yield servers


# -- the client -------------------------------------------------------------------------------


@dataclass
class Client:
    """One user: one cookie jar, a fresh connection per request (like a browser's second tab)."""

    port: int
    jar: dict[str, str] = field(default_factory=dict)

    def open(self, path: str, *, session: bool = True) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Connection": "close"}
        if session and self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if session:
            for header in response.headers.get_all("Set-Cookie") or ():
                for name, morsel in SimpleCookie(header).items():
                    self.jar[name] = morsel.value
        return response

    def get(self, path: str, *, session: bool = True) -> tuple[bytes, str]:
        """The whole body and the Server-Timing header."""
        response = self.open(path, session=session)
        body = response.read()
        response.close()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        return body, response.headers.get("Server-Timing", "")


def _lock_wait_ms(server_timing: str) -> float | None:
    for part in server_timing.split(","):
        name, _, rest = part.strip().partition(";")
        if name == "sessionlock":
            for param in rest.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    return float(value)
    return None


Sample = tuple[float, float | None]  # next request's latency (ms), its lock wait (ms)


def _timed_next(client: Client) -> Sample:
    start = time.perf_counter()
    _, timing = client.get("/next")
    return (time.perf_counter() - start) * 1000, _lock_wait_ms(timing)


def behind_background(client: Client, seconds: float, token: str) -> Sample:
    """(a) The page arrives; its background task runs on; the user asks for the next page."""
    client.get(f"/bg?s={seconds}&token={token}")
    sample = _timed_next(client)
    # Not part of the figure: let the task end before the next round, so every variant
    # measures with a task running. Asked without the cookie: another session, no wait.
    client.get(f"/settled?token={token}", session=False)
    return sample


def behind_stream(client: Client, seconds: float, token: str) -> Sample:
    """(b), (c) The stream's head and first chunk arrive; the user asks for the next page."""
    stream = client.open(f"/stream?s={seconds}&token={token}")
    try:
        if stream.status != 200 or not stream.read1(64):
            raise RuntimeError(f"stream: {stream.status}, no first chunk")
        sample = _timed_next(client)
        stream.read()  # the rest of the stream, to its end
    finally:
        stream.close()
    return sample


Scenario = Callable[[Client, float, str], Sample]
SCENARIOS: list[tuple[str, str, Scenario]] = [
    ("(a) behind a background task", "uvicorn", behind_background),
    ("(b) behind a stream (ASGI)", "uvicorn", behind_stream),
    ("(c) behind a stream (WSGI)", "gunicorn", behind_stream),
]


# -- measurement ------------------------------------------------------------------------------


def release_default() -> str | None:
    """The ``release`` option's default, or None when this sessionlock has no such option."""
    parameter = inspect.signature(Core.__init__).parameters.get("release")
    return None if parameter is None else str(parameter.default)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    rounds, seconds = (3, 0.25) if args.quick else (7, 1.0)
    default = release_default()
    variants = ["bare", "default"] if default is None else ["bare", "default", "end"]
    labels = {
        "bare": "bare",
        "default": "wrapped (no release option)"
        if default is None
        else f'wrapped, release="{default}" (default)',
        "end": 'wrapped, release="end"',
    }

    print(
        f"the next request of one session behind a {seconds:g} s background task or stream: "
        f"{rounds} rounds, medians"
    )
    samples: dict[tuple[int, str], list[Sample]] = {}
    with running(["uvicorn", "gunicorn"], variants) as servers:
        clients = {key: Client(server.port) for key, server in servers.items()}
        for client in clients.values():  # warm up; the first answer sets the identity cookie
            client.get("/next")
            client.get(f"/stream?s={min(seconds, 0.05)}")
        for client in (clients["uvicorn", v] for v in variants):
            client.get("/bg?s=0.01&token=warm")
            client.get("/settled?token=warm", session=False)
        for r in range(rounds):
            for s, (_, kind, scenario) in enumerate(SCENARIOS):
                for i in range(len(variants)):
                    variant = variants[(r + s + i) % len(variants)]
                    sample = scenario(clients[kind, variant], seconds, f"r{r}s{s}{variant}")
                    samples.setdefault((s, variant), []).append(sample)

    rows = []
    for s, (title, kind, _) in enumerate(SCENARIOS):
        bare = [ms for ms, _ in samples[s, "bare"]]
        for variant in variants:
            latencies = [ms for ms, _ in samples[s, variant]]
            waits = [w for _, w in samples[s, variant] if w is not None]
            ratio = median([v / b for v, b in zip(latencies, bare, strict=True)])
            added = median([v - b for v, b in zip(latencies, bare, strict=True)])
            verdict = ""
            if variant == "default" and default is not None:
                verdict = "yes" if added <= TARGET_MS else "NO"
            rows.append(
                [
                    title,
                    kind,
                    labels[variant],
                    f"{median(latencies):.2f}",
                    f"{ratio:.2f}x",
                    f"{added:+.2f}",
                    f"{median(waits):.1f}" if waits else "-",
                    verdict,
                ]
            )
    headers = ["scenario", "server", "variant", "next ms", "x bare", "+ms", "lock wait ms"]
    print_table([*headers, f"head: +ms <= {TARGET_MS:g}"], rows)
    if default is None:
        print(
            '\nrelease="end" skipped: this sessionlock has no `release` option; its default '
            "is the old behaviour (the lock held until the response is complete)."
        )
    print("x bare, +ms: medians over rounds of the per-round ratio and difference to bare.")
    print("lock wait: the middleware's Server-Timing on the next response (- for bare).")


if __name__ == "__main__":
    main()
