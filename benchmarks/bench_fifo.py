"""FIFO across worker processes: one session, 8 clients, 2 uvicorn workers vs 1, ``file://``.

    .venv/bin/python -m benchmarks.bench_fifo            # about 30 s
    .venv/bin/python -m benchmarks.bench_fifo --quick    # about 8 s: checks that it works

One browser identity (the ``sessionlock`` cookie from a first request, shared by every
client: one jar) and 8 closed-loop clients, each a thread with its own keep-alive
connection, each sending its next request as soon as its previous one is answered. The app
holds the session 5 ms per request (``asyncio.sleep``), so the requests run one at a time and
each waits for the others: with a fair (FIFO) line every request waits about 7 x 5 ms. The
servers are ``uvicorn --workers 2`` and ``uvicorn --workers 1`` through
``sessionlock.uvicorn:app`` on ``file://`` (a fresh temp directory each); with 2 workers the
8 connections are spread 4 and 4 (a connection that lands on a worker that already has 4 is
closed and opened again), so the line runs across the two processes and its order across
them is the file backend's. Latency is from sending a request to its last byte. The two
servers alternate round after round; p50 and p99 are over all samples of a server.
Target: p99 with 2 workers within 1.3x of p99 with 1 worker.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from ._figures import Figure, print_figures
from ._servers import running
from ._table import median, parse_args, percentile, print_table

CLIENTS = 8
HOLD = 0.005  # seconds the app holds the session per request
TARGET = 1.3  # p99(2 workers) / p99(1 worker)
WORKER_COUNTS = (1, 2)

# -- the app the servers run ------------------------------------------------------------------

Message = MutableMapping[str, Any]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """5 ms of (awaited) work; answers with the worker's pid, to see where a request ran."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(HOLD)
    body = str(os.getpid()).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the client -------------------------------------------------------------------------------


@dataclass
class Jar:
    """One browser's cookies, shared by its clients (tabs)."""

    cookies: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def header(self) -> dict[str, str]:
        with self.lock:
            if not self.cookies:
                return {}
            return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def update(self, response: http.client.HTTPResponse) -> None:
        for header in response.headers.get_all("Set-Cookie") or ():
            with self.lock:
                for name, morsel in SimpleCookie(header).items():
                    self.cookies[name] = morsel.value


def get(conn: http.client.HTTPConnection, jar: Jar) -> tuple[int, str]:
    """(status, body: the worker's pid) of one request on ``conn``."""
    conn.request("GET", "/", headers=jar.header())
    response = conn.getresponse()
    body = response.read().decode()
    jar.update(response)
    return response.status, body


Connection = tuple[http.client.HTTPConnection, str]  # and the pid of its worker


def connect(port: int, jar: Jar, per_worker: int | None) -> list[Connection]:
    """CLIENTS connections, each with the pid of its worker; at most ``per_worker`` each."""
    connections: list[Connection] = []
    attempts = 0
    while len(connections) < CLIENTS:
        attempts += 1
        if attempts > 50 * CLIENTS:
            raise RuntimeError("could not spread the connections over the workers")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        status, pid = get(conn, jar)
        if status != 200:
            raise RuntimeError(f"probe: {status}")
        if per_worker is not None and sum(1 for _, p in connections if p == pid) >= per_worker:
            conn.close()
            continue
        connections.append((conn, pid))
    return connections


@dataclass
class Round:
    latencies: list[float]  # ms
    statuses: dict[int, int]  # status -> count
    per_worker: dict[str, int]  # connections per worker pid


def load(port: int, workers: int, jar: Jar, seconds: float) -> Round:
    """CLIENTS closed-loop clients on one session for ``seconds``."""
    connections = connect(port, jar, CLIENTS // workers if workers > 1 else None)
    barrier = threading.Barrier(len(connections))
    deadline = [0.0]
    samples: list[list[float]] = [[] for _ in connections]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(index: int, conn: http.client.HTTPConnection) -> None:
        if barrier.wait() == 0:
            deadline[0] = time.monotonic() + seconds
        barrier.wait()
        while time.monotonic() < deadline[0]:
            start = time.perf_counter()
            status, _ = get(conn, jar)
            samples[index].append((time.perf_counter() - start) * 1000)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    threads = [
        threading.Thread(target=client, args=(i, conn)) for i, (conn, _) in enumerate(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_worker: dict[str, int] = {}
    for conn, pid in connections:
        conn.close()
        per_worker[pid] = per_worker.get(pid, 0) + 1
    return Round([s for client in samples for s in client], statuses, per_worker)


Results = dict[int, list[Round]]


def measure(rounds: int, seconds: float) -> Results:
    results: Results = {w: [] for w in WORKER_COUNTS}
    with tempfile.TemporaryDirectory(prefix="bench-fifo-") as scratch:
        base = Path(scratch)
        (base / "logs").mkdir()
        commands = {}
        for workers in WORKER_COUNTS:
            argv = ["uvicorn", "--factory", "sessionlock.uvicorn:app", "--host", "127.0.0.1"]
            argv += ["--port", "{port}", "--workers", str(workers), "--log-level", "warning"]
            argv += ["--no-access-log"]
            env = {
                "SESSIONLOCK_APP": "benchmarks.bench_fifo:app",
                "SESSIONLOCK_BACKEND": f"file://{base / f'locks-{workers}'}",
            }
            commands[f"uvicorn --workers {workers}"] = (argv, env)
        with running(commands, base / "logs") as servers:
            ports = {w: servers[f"uvicorn --workers {w}"].port for w in WORKER_COUNTS}
            jars = {w: Jar() for w in WORKER_COUNTS}  # one browser per server
            for w in WORKER_COUNTS:  # warm up; the first answer sets the identity
                load(ports[w], w, jars[w], 0.5)
            for r in range(rounds):
                for i in range(len(WORKER_COUNTS)):
                    w = WORKER_COUNTS[(r + i) % len(WORKER_COUNTS)]
                    results[w].append(load(ports[w], w, jars[w], seconds))
                    servers[f"uvicorn --workers {w}"].check()
    return results


@dataclass
class Summary:
    samples: int
    p50: float
    p99: float
    worst: float
    rate: float
    refused: int
    spread: str


def summarize(rounds: list[Round], seconds: float) -> Summary:
    latencies = [s for r in rounds for s in r.latencies]
    refused = sum(n for r in rounds for status, n in r.statuses.items() if status != 200)
    spreads = {"/".join(str(n) for n in sorted(r.per_worker.values())) for r in rounds}
    return Summary(
        samples=len(latencies),
        p50=median(latencies),
        p99=percentile(latencies, 99),
        worst=max(latencies),
        rate=len(latencies) / (seconds * len(rounds)),
        refused=refused,
        spread=", ".join(sorted(spreads)),
    )


def figures_from(results: Results, seconds: float) -> list[Figure]:
    one, two = summarize(results[1], seconds), summarize(results[2], seconds)
    value = two.p99 / one.p99
    refused = f", {two.refused} not 200" if two.refused else ""
    return [
        Figure(
            f"FIFO across workers: 1 session, {CLIENTS} clients, {HOLD * 1000:g} ms handler,"
            " p99 2 workers / 1 worker",
            f"{value:.2f}x ({two.p99:.1f} ms{refused})",
            f"1 worker p99 {one.p99:.1f} ms (fair line {CLIENTS * HOLD * 1000:g} ms)",
            f"<= {TARGET:g}x",
            value <= TARGET and two.refused == 0,
        )
    ]


def sizes(quick: bool) -> tuple[int, float]:
    """(rounds, seconds per round and server)."""
    return (2, 1.5) if quick else (4, 3.0)


def figures(quick: bool) -> list[Figure]:
    rounds, seconds = sizes(quick)
    return figures_from(measure(rounds, seconds), seconds)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    rounds, seconds = sizes(args.quick)
    results = measure(rounds, seconds)
    print(
        f"one session, {CLIENTS} closed-loop clients, {HOLD * 1000:g} ms per request, file://:"
        f" {rounds} rounds x {seconds:g} s per server"
    )
    rows = []
    for workers in WORKER_COUNTS:
        s = summarize(results[workers], seconds)
        rows.append(
            [
                f"uvicorn --workers {workers}",
                str(s.samples),
                f"{s.rate:.0f}",
                f"{s.p50:.1f}",
                f"{s.p99:.1f}",
                f"{s.worst:.1f}",
                str(s.refused),
                s.spread,
            ]
        )
    headers = ["server", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "not 200"]
    print_table([*headers, "connections per worker"], rows)
    print()
    print_figures(figures_from(results, seconds))


if __name__ == "__main__":
    main()
