"""The middleware's own cost per uncontended request: raw WSGI and ASGI apps, µs added.

    .venv/bin/python -m benchmarks.bench_uncontended [--quick]

The apps are the cheapest possible (WSGI: ``start_response`` and ``[b"ok"]``; ASGI: a start
and a body message), called in-process with a prepared environ or scope, so the difference
wrapped - bare is the middleware alone. A returning browser carries a signed identity cookie
(the default key); a first visit carries none and is issued one. Variants are timed in
interleaved batches, round after round in a rotating order, and the figure is the median over
rounds of (wrapped - bare) within the same round. Targets: WSGI <= 6 µs, ASGI <= 3 µs on
``memory://``; ``file://`` (a temp directory) adds <= 5 µs over ``memory://``.

Anchors, the floors: the least a per-session lock middleware can do
(:mod:`benchmarks._minimal`: a dict of locks, a release at the response head, none of the
safety), timed in the same rounds; and the system calls ``file://``'s fair lock makes per
uncontended request (take bytes 0-1, drop the mark, ``fstat``, unlock) with no Python around
them, beside the two of a plain, unfair ``flock``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from sessionlock import asgi, keys, wsgi
from sessionlock._types import Receive, Scope, Send
from sessionlock.backends import Backend, from_url

from ._figures import Figure
from ._minimal import MinimalASGI, MinimalWSGI
from ._table import measure, median, parse_args, print_table

TARGETS = {"WSGI": 6.0, "ASGI": 3.0}
FILE_EXTRA = 5.0  # file:// over memory://, µs
SECRET = "bench-uncontended-secret-0123456"
# A returning browser: an identity cookie the middleware issued (signed), so none is issued.
_ISSUED = keys.identity().bind(keys.derive_secret(SECRET)).issue_for(False, "q" * 43)
IDENTITY_COOKIE = _ISSUED.partition(";")[0]
VISITS = {"returning": f"{IDENTITY_COOKIE}; theme=dark", "first visit": "theme=dark"}

Batch = Callable[[int], float]


# -- WSGI -------------------------------------------------------------------------------------


def raw_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def wsgi_batch(app: Callable[..., Iterable[bytes]], cookie: str) -> Batch:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_COOKIE": cookie,
        "wsgi.url_scheme": "http",
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


# -- ASGI -------------------------------------------------------------------------------------


async def raw_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def asgi_batch(app: Callable[..., Any], cookie: str, loop: asyncio.AbstractEventLoop) -> Batch:
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"cookie", cookie.encode())],
        "server": ("127.0.0.1", 8000),
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


# -- the file lock's system calls, nothing else ------------------------------------------------


def _ofd(kind: int, start: int, length: int) -> bytes:
    return struct.pack("hhqqi", kind, os.SEEK_SET, start, length, 0)


def syscall_batch(fd: int, fair: bool) -> Batch:
    """µs per lock and unlock of the open file ``fd``: ``file://``'s four calls (``fair``), or
    a plain ``flock``'s two."""
    take, drop = _ofd(fcntl.F_WRLCK, 0, 2), _ofd(fcntl.F_UNLCK, 1, 1)
    give, setlk = _ofd(fcntl.F_UNLCK, 0, 1), fcntl.F_OFD_SETLK

    def run(n: int) -> float:
        start = time.perf_counter_ns()
        if fair:
            for _ in range(n):
                fcntl.fcntl(fd, setlk, take)
                fcntl.fcntl(fd, setlk, drop)
                os.fstat(fd)
                fcntl.fcntl(fd, setlk, give)
        else:
            for _ in range(n):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
        return (time.perf_counter_ns() - start) / n / 1000

    return run


# -- measurement ------------------------------------------------------------------------------


def added(times: dict[str, list[float]], name: str, base: str = "bare") -> float:
    """Median over rounds of ``name`` minus ``base`` measured in the same round (µs)."""
    return median([a - b for a, b in zip(times[name], times[base], strict=True)])


def rows_for(shell: str, times: dict[str, list[float]]) -> list[list[str]]:
    target = TARGETS[shell]
    rows = [[shell, "bare", "", f"{median(times['bare']):.2f}", "", "", ""]]
    floor = [median(times["minimal"]), added(times, "minimal")]
    rows.append([shell, "minimal lock (floor)", "returning", *(f"{f:.2f}" for f in floor), "", ""])
    for visit in VISITS:
        memory, file = f"memory://, {visit}", f"file://, {visit}"
        cost = added(times, memory)
        rows.append([shell, "memory://", visit, f"{median(times[memory]):.2f}", f"{cost:.2f}"])
        if visit == "returning":  # the target; a first visit also issues an identity
            rows[-1] += [f"<= {target:g}", "yes" if cost <= target else "NO"]
        else:
            rows[-1] += ["", ""]
        extra = added(times, file, memory)
        rows.append([shell, "file://", visit, f"{median(times[file]):.2f}", f"{cost + extra:.2f}"])
        rows[-1] += [f"{extra:+.2f} (<= +{FILE_EXTRA:g})", "yes" if extra <= FILE_EXTRA else "NO"]
    return rows


def sizes(quick: bool) -> tuple[int, int]:
    """(rounds, requests per batch)."""
    return (7, 2000) if quick else (15, 10000)


def measure_shells(quick: bool) -> dict[str, dict[str, list[float]]]:
    """µs/request per round of every variant, by shell (``WSGI``, ``ASGI``); and µs per lock
    and unlock of the raw system calls (``syscalls``: ``fair``, ``flock``)."""
    rounds, n = sizes(quick)
    directory = tempfile.mkdtemp(prefix="sessionlock-bench-")
    backends: dict[str, Backend] = {
        "memory://": from_url("memory://"),
        "file://": from_url(f"file://{directory}"),
    }
    raw_fd = os.open(os.path.join(directory, "raw.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    loop = asyncio.new_event_loop()
    try:
        returning = VISITS["returning"]
        wsgi_variants: dict[str, Batch] = {
            "bare": wsgi_batch(raw_wsgi, returning),
            "minimal": wsgi_batch(MinimalWSGI(raw_wsgi), returning),
        }
        asgi_variants: dict[str, Batch] = {
            "bare": asgi_batch(raw_asgi, returning, loop),
            "minimal": asgi_batch(MinimalASGI(raw_asgi), returning, loop),
        }
        syscalls = {
            "fair": syscall_batch(raw_fd, fair=True),
            "flock": syscall_batch(raw_fd, fair=False),
        }
        for label, backend in backends.items():
            wrapped_wsgi = wsgi.SessionLockMiddleware(raw_wsgi, backend=backend, secret=SECRET)
            wrapped_asgi = asgi.SessionLockMiddleware(raw_asgi, backend=backend, secret=SECRET)
            for visit, cookie in VISITS.items():
                wsgi_variants[f"{label}, {visit}"] = wsgi_batch(wrapped_wsgi, cookie)
                asgi_variants[f"{label}, {visit}"] = asgi_batch(wrapped_asgi, cookie, loop)
        return {
            "WSGI": measure(wsgi_variants, rounds=rounds, n=n),
            "ASGI": measure(asgi_variants, rounds=rounds, n=n),
            "syscalls": measure(syscalls, rounds=rounds, n=n),
        }
    finally:
        loop.close()
        os.close(raw_fd)
        for backend in backends.values():
            backend.close()
        shutil.rmtree(directory, ignore_errors=True)


def figures(quick: bool) -> list[Figure]:
    """The headline figures for ``python -m benchmarks``: the targets above, per shell."""
    measured = measure_shells(quick)
    calls = measured["syscalls"]
    floor = (
        f"its 4 system calls alone {median(calls['fair']):.2f} µs"
        f" (plain flock's 2: {median(calls['flock']):.2f})"
    )
    out = []
    for shell in ("WSGI", "ASGI"):
        times = measured[shell]
        cost, target = added(times, "memory://, returning"), TARGETS[shell]
        anchor = (
            f"bare raw {shell} app {median(times['bare']):.2f} µs;"
            f" a minimal lock middleware +{added(times, 'minimal'):.2f} µs"
        )
        name = f"uncontended cost per request, {shell}, memory://"
        out.append(Figure(name, f"+{cost:.2f} µs", anchor, f"<= {target:g} µs", cost <= target))
        for visit in VISITS:
            extra = added(times, f"file://, {visit}", f"memory://, {visit}")
            name = f"uncontended cost per request, {shell}, file:// over memory://"
            name += "" if visit == "returning" else f" ({visit})"
            anchor = f"memory:// {median(times[f'memory://, {visit}']):.2f} µs"
            anchor += f"; {floor}" if visit == "returning" else ""
            limit = f"<= +{FILE_EXTRA:g} µs"
            out.append(Figure(name, f"{extra:+.2f} µs", anchor, limit, extra <= FILE_EXTRA))
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    measured = measure_shells(args.quick)
    rounds, n = sizes(args.quick)
    print(f"uncontended cost: {rounds} rounds x {n} requests per variant, medians")
    rows = [row for shell in ("WSGI", "ASGI") for row in rows_for(shell, measured[shell])]
    headers = ["shell", "backend", "visit", "µs/request", "µs added", "target", "met"]
    print_table(headers, rows)
    calls = measured["syscalls"]
    print(
        f"file:// lock's system calls per request, no Python around them:"
        f" {median(calls['fair']):.2f} µs (4: fair, FIFO across processes);"
        f" a plain flock's 2: {median(calls['flock']):.2f} µs"
    )


if __name__ == "__main__":
    main()
