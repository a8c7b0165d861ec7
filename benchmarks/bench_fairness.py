"""Fair to other sessions: session B's latency while session A floods, bare vs wrapped.

    .venv/bin/python -m benchmarks.bench_fairness [--quick]

Session A keeps sending bursts: one slow request (1 s of work) and 8 fast ones at once,
again as soon as the burst is answered. Session B sends fast requests one after another
(a fresh connection each, 10 ms apart) and we time each, from sending to its last byte.
Servers: waitress (its default 4 threads), gunicorn gthread (1 worker x 8 threads) and
gunicorn sync (4 workers, ``file://``), each bare and wrapped with the defaults (through
``sessionlock.gunicorn:wrap`` for gunicorn, so ``max_waiting_threads`` is derived from
the workers' threads; from waitress itself for waitress). Quiet: B alone; flood: B while A
floods. Figures: B's p50 and p99 in ms; target: wrapped p99 <= 1.5x bare p99 under flood.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ._servers import free_port, stop, wait_listening
from ._table import parse_args, percentile, print_table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET = 1.5
BURST = 8
SLOW = 1.0


# -- the app the servers run ------------------------------------------------------------------


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(SLOW)  # A's slow page
    body = json.dumps({"ok": True}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def wrapped_app() -> Any:
    """waitress ``--call``: the app in the middleware, with the defaults but the key."""
    from sessionlock.wsgi import SessionLockMiddleware

    return SessionLockMiddleware(app, key="cookie:sid", backend="memory://")


# -- servers ----------------------------------------------------------------------------------


def _command(server: str, wrapped: bool, port: int, locks: str) -> list[str]:
    target = "benchmarks.bench_fairness:app"
    if server == "waitress":
        name = "benchmarks.bench_fairness:wrapped_app" if wrapped else target
        call = ["--call"] if wrapped else []
        return [str(BIN / "waitress-serve"), f"--listen=127.0.0.1:{port}", *call, name]
    backend = "memory://" if server == "gthread" else locks
    if wrapped:
        target = f"sessionlock.gunicorn:wrap({target!r}, backend={backend!r}, key='cookie:sid')"
    command = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    if server == "gthread":
        command += ["--worker-class", "gthread", "--workers", "1", "--threads", "8"]
    else:
        command += ["--worker-class", "sync", "--workers", "4"]
    return [*command, "--timeout", "60", target]


@contextlib.contextmanager
def running(server: str, wrapped: bool) -> Iterator[int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        command = _command(server, wrapped, port, f"file://{scratch}/locks")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = Path(scratch) / "log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_listening(process, port, log, server, time.monotonic() + 60)
            yield port
        finally:
            stop(process)


# -- clients ----------------------------------------------------------------------------------


def get(port: int, path: str, sid: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": f"sid={sid}", "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def flood(port: int, stop: threading.Event, statuses: list[int]) -> None:
    """Session A: a slow request and BURST fast ones at once, again and again."""
    sid = uuid.uuid4().hex
    while not stop.is_set():
        paths = ["/slow"] + ["/fast"] * BURST
        threads = [
            threading.Thread(target=lambda p=p: statuses.append(get(port, p, sid))) for p in paths
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.002)  # the slow one first, then the burst
        for thread in threads:
            thread.join()


def session_b(port: int, samples: int) -> list[float]:
    sid, latencies = uuid.uuid4().hex, []
    for _ in range(samples):
        start = time.perf_counter()
        status = get(port, "/fast", sid)
        latencies.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"session B got {status}")
        time.sleep(0.01)
    return latencies


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    samples = 30 if args.quick else 200
    rows: list[list[object]] = []
    flood_p99: dict[tuple[str, str], float] = {}
    for server in ("waitress", "gthread", "sync"):
        for variant in ("bare", "wrapped"):
            with running(server, variant == "wrapped") as port:
                for _ in range(5):
                    get(port, "/fast", "warm")
                quiet = session_b(port, samples)
                stop, statuses = threading.Event(), list[int]()
                flooder = threading.Thread(target=flood, args=(port, stop, statuses))
                flooder.start()
                time.sleep(0.2)  # let the first burst arrive
                flooded = session_b(port, samples)
                stop.set()
                flooder.join()
            refused = sum(1 for s in statuses if s in (429, 503))
            flood_p99[server, variant] = percentile(flooded, 99)
            ratio = ""
            if variant == "wrapped":
                ratio = f"{flood_p99[server, variant] / flood_p99[server, 'bare']:.2f}x"
            rows.append(
                [
                    server,
                    variant,
                    f"{percentile(quiet, 50):.1f}",
                    f"{percentile(quiet, 99):.1f}",
                    f"{percentile(flooded, 50):.1f}",
                    f"{percentile(flooded, 99):.1f}",
                    ratio,
                    f"{refused}/{len(statuses)}",
                ]
            )
    print(f"session B: {samples} requests quiet, {samples} while A floods (1 s + {BURST} fast)")
    print_table(
        [
            "server",
            "variant",
            "quiet p50",
            "quiet p99",
            "flood p50",
            "flood p99",
            f"p99/bare (<= {TARGET}x)",
            "A refused",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
