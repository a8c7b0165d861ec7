"""One session, N queued requests of t each: how close is the wall time to N x t?

    .venv/bin/python -m benchmarks.bench_queue [--quick]

N threads fire at once at the WSGI middleware with the same session cookie; the app holds
the session for t = 2 ms (sleep, then spin to an exact deadline, so t does not depend on
timer slack). Efficiency = N x t / wall, wall being from the first request's call to the
last response's ``close()``. Ours runs over ``memory://`` (this process only) and over
``file://`` (the default: flock, serializing the processes of one host). The control is the
same app behind a bare ``threading.Lock`` taken before the app and released at ``close()``.
Variants interleave; medians over rounds. Target: efficiency >= 0.95.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sessionlock import wsgi

from ._figures import Figure, print_figures
from ._table import median, parse_args, print_table

TARGET = 0.95
T = 0.002  # seconds each request holds the session
SPIN = 0.0003  # the tail of t that is spun rather than slept
SIZES = (2, 8, 32)
BACKENDS = {"middleware, memory://": "memory://", "middleware, file:// (default)": "file://"}
ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": "sid=one-session"}

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Work:
    """The app: holds for exactly T, and checks that no two requests overlap."""

    def __init__(self) -> None:
        self.inside = 0
        self.overlaps = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        deadline = time.perf_counter() + T
        time.sleep(T - SPIN)
        while time.perf_counter() < deadline:
            pass
        self.inside -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


class RawLock:
    """Control: one ``threading.Lock`` around the app, released when the body is closed."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.lock.acquire()
        try:
            return _Released(self.app(environ, start_response), self.lock.release)
        except BaseException:
            self.lock.release()
            raise


class _Released:
    def __init__(self, body: Iterable[bytes], release: Callable[[], None]) -> None:
        self.body = body
        self.close = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)


def run(app: App, n: int) -> float:
    """Fire ``n`` requests at once; the efficiency N x t / wall."""
    barrier = threading.Barrier(n)
    spans: list[tuple[float, float]] = []
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    def client() -> None:
        barrier.wait()
        start = time.perf_counter()
        body = app(dict(ENVIRON), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        spans.append((start, time.perf_counter()))

    threads = [threading.Thread(target=client) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if statuses != ["200 OK"] * n:
        raise AssertionError(f"not every request got its turn: {statuses}")
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return n * T / wall


RAW = "raw threading.Lock"
Results = dict[tuple[str, int], list[float]]


def measure(quick: bool) -> Results:
    """Efficiency per (variant, N) per round; variant names: RAW and BACKENDS' keys."""
    rounds = 5 if quick else 21
    works = {name: Work() for name in (RAW, *BACKENDS)}
    apps: dict[str, App] = {RAW: RawLock(works[RAW])}
    for name, url in BACKENDS.items():
        apps[name] = wsgi.SessionLockMiddleware(
            works[name], backend=url, key="cookie:sid", max_waiters=max(SIZES)
        )
    names = list(apps)
    results: dict[tuple[str, int], list[float]] = {(m, n): [] for m in names for n in SIZES}
    for name in names:  # warm up
        run(apps[name], 2)
    for r in range(rounds):
        for n in SIZES:
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                results[name, n].append(run(apps[name], n))
    for name, work in works.items():
        if work.overlaps:
            raise AssertionError(f"{name}: {work.overlaps} critical sections overlapped")
    return results


def figures_from(results: Results) -> list[Figure]:
    out = []
    raw = " / ".join(f"{median(results[RAW, n]):.3f}" for n in SIZES)
    sizes = "/".join(str(n) for n in SIZES)
    for name in BACKENDS:
        values = [median(results[name, n]) for n in SIZES]
        out.append(
            Figure(
                f"one key, N = {sizes} queued {T * 1000:g} ms requests: efficiency,"
                f" {name.removeprefix('middleware, ')}",
                " / ".join(f"{v:.3f}" for v in values),
                f"{RAW} {raw}",
                f">= {TARGET} each",
                all(v >= TARGET for v in values),
            )
        )
    return out


def figures(quick: bool) -> list[Figure]:
    return figures_from(measure(quick))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    results = measure(args.quick)
    names = [RAW, *BACKENDS]
    rounds = len(results[RAW, SIZES[0]])
    print(f"one key, N queued requests of t = {T * 1000:g} ms each: {rounds} rounds, medians")
    rows: list[list[str]] = []
    for n in SIZES:
        raw = median(results[names[0], n])
        for name in names:
            efficiency = median(results[name, n])
            wall = n * T / efficiency * 1000
            verdict = "yes" if efficiency >= TARGET else "NO"
            figures = [f"{n * T * 1000:.0f}", f"{wall:.2f}", f"{efficiency:.3f}"]
            rows.append([str(n), name, *figures, f"{efficiency / raw:.3f}", verdict])
    headers = ["N", "variant", "N x t ms", "wall ms", "efficiency", "vs raw", f">= {TARGET}"]
    print_table(headers, rows)
    print()
    print_figures(figures_from(results))


if __name__ == "__main__":
    main()
