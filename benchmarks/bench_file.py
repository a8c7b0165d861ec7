"""The file backend: cross-process wake latency, overhead, bounded files, gunicorn throughput.

    .venv/bin/python -m benchmarks.bench_file            # full run (a few minutes)
    .venv/bin/python -m benchmarks.bench_file --quick    # seconds: checks that it works

1. Wake latency across processes: a holder process releases, a waiter process already
   blocked on the same key runs; time from just before the release to the waiter's first
   instruction (CLOCK_MONOTONIC is shared by processes). Ours (``Core.enter`` over
   ``FileBackend``, threads; and ``enter_async``, tasks) vs a raw blocking ``flock`` hand-off
   (the floor) vs ``filelock.FileLock``, which polls: at its default interval (50 ms) and at
   1 ms. And the floor of any asyncio waiter, lock or not: an idle loop woken by a
   datagram. The holder releases at a random moment (seeded: the same schedule every run),
   2 ms plus up to one poll interval (at least 1 ms) after the waiter started waiting, so a
   poller is caught anywhere in its interval, as by a real release, not always just after
   its first poll. Targets: ours p50 within 2x of raw, p99 under 1 ms.
2. Uncontended cost per request, in process: ``Core.enter/leave`` and a WSGI request through
   the middleware, file backend vs memory backend.
3. 100 000 distinct keys locked and released (10 000 with --quick): files left in the
   directory; and as many values written with a TTL: files left.
4. Distinct sessions through gunicorn (2 workers, gthread), wrapped (file backend) vs bare,
   a minimal app: requests per second, ratio (target >= 0.9).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._figures import Figure, print_figures
from benchmarks._handoff import hand_off
from benchmarks._servers import free_port
from benchmarks._table import median, parse_args, percentile, print_table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY = "0123456789abcdef0123456789abcdef"
SEED = 20240501  # the release schedule: random, the same in every run
TARGET_RATIO = 2.0  # ours p50 / raw flock p50
TARGET_P99_US = 1000.0


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The minimal WSGI app that gunicorn serves in part 4."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


# -- 1. wake latency ------------------------------------------------------------------------


class Variant:
    """A lock both processes can take: hold/release in the holder, wait in the waiter."""

    poll = 0.0  # seconds between a poller's attempts (0: woken by the release)

    def setup(self, directory: str) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def wait(self) -> None:
        """Block until the lock is ours (the timestamp is taken right after)."""

    def done(self) -> None:
        """Give the lock back after a sample."""


class RawFlock(Variant):
    def setup(self, directory: str) -> None:
        self.fd = os.open(os.path.join(directory, "raw.lock"), os.O_RDWR | os.O_CREAT, 0o600)

    def hold(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    wait = hold
    done = release


class RawLoopWake(Variant):
    """The floor of any waiter that is an asyncio task: the holder sends one datagram, the
    waiter's idle loop wakes on it (``add_reader``), resolves a future and returns from
    ``run_until_complete``, as ``OursAsync`` does. No lock: the loop's own cost."""

    def setup(self, directory: str) -> None:
        self.address = os.path.join(directory, "loop.sock")
        self.sock: socket.socket | None = None

    def hold(self) -> None:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def release(self) -> None:
        assert self.sock is not None
        self.sock.sendto(b"", self.address)

    def wait(self) -> None:
        if self.sock is None:  # the waiter's end, bound before it says it waits
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.address)
            self.sock.setblocking(False)
            self.loop = asyncio.new_event_loop()
        sock, loop = self.sock, self.loop

        async def woken() -> None:
            future = loop.create_future()
            loop.add_reader(sock, future.set_result, None)
            try:
                await future
            finally:
                loop.remove_reader(sock)
            sock.recv(1)

        loop.run_until_complete(woken())

    def done(self) -> None:
        return None


class FileLockDefaults(Variant):
    poll = 0.05  # filelock's default poll_interval

    def setup(self, directory: str) -> None:
        import filelock

        self.lock = filelock.FileLock(os.path.join(directory, "filelock.lock"))

    def hold(self) -> None:
        self.lock.acquire(poll_interval=self.poll)

    def release(self) -> None:
        self.lock.release()

    wait = hold
    done = release


class FileLockPoll1ms(FileLockDefaults):
    poll = 0.001


class Ours(Variant):
    def setup(self, directory: str) -> None:
        from sessionlock.core import Core

        self.core = Core(backend=f"file://{directory}/ours", key="header:X-S", timeout=60.0)

    def _admission(self) -> Any:
        return self.core.admit({"REQUEST_METHOD": "GET", "HTTP_X_S": "bench-session"})

    def hold(self) -> None:
        self.admission = self._admission()
        self.core.enter(self.admission)

    def release(self) -> None:
        self.core.leave(self.admission)

    wait = hold
    done = release


class OursAsync(Ours):
    def setup(self, directory: str) -> None:
        super().setup(directory)
        self.loop = asyncio.new_event_loop()

    def wait(self) -> None:
        self.admission = self._admission()
        never: asyncio.Future[None] = self.loop.create_future()
        self.loop.run_until_complete(self.core.enter_async(self.admission, lambda: never))

    def done(self) -> None:
        self.loop.run_until_complete(self.core.leave_async(self.admission))


VARIANTS: dict[str, type[Variant]] = {
    "raw flock hand-off": RawFlock,
    "ours, threads": Ours,
    "ours, asyncio": OursAsync,
    "raw loop wake (no lock)": RawLoopWake,
    "filelock.FileLock, default 50 ms poll": FileLockDefaults,
    "filelock.FileLock, 1 ms poll": FileLockPoll1ms,
}
RAW, THREADS, ASYNCIO = "raw flock hand-off", "ours, threads", "ours, asyncio"
LOOP = "raw loop wake (no lock)"
FILELOCK, FILELOCK_1MS = "filelock.FileLock, default 50 ms poll", "filelock.FileLock, 1 ms poll"


def measure_wake(directory: str, quick: bool) -> dict[str, list[float]]:
    """Wake latencies (µs) per variant."""
    results: dict[str, list[float]] = {}
    for name in VARIANTS:
        samples = (20 if quick else 100) if name == FILELOCK else (100 if quick else 1000)
        results[name] = hand_off("benchmarks.bench_file", name, directory, samples, SEED)
    return results


def part_wake(directory: str, quick: bool) -> list[Figure]:
    print("\n1. Cross-process wake latency (µs, release -> waiter runs)")
    rows = []
    results = measure_wake(directory, quick)
    raw = median(results[RAW])
    for name, values in results.items():
        p50, p99 = median(values), percentile(values, 99)
        rows.append([name, len(values), f"{p50:.0f}", f"{p99:.0f}", f"{p50 / raw:.2f}x"])
    print_table(["variant", "samples", "p50 µs", "p99 µs", "p50 vs raw"], rows)
    return wake_figures(results)


def wake_figures(results: dict[str, list[float]]) -> list[Figure]:
    raw50, raw99 = median(results[RAW]), percentile(results[RAW], 99)
    polls = f"filelock {median(results[FILELOCK]) / 1000:.1f} ms (50 ms poll)"
    polls += f", {median(results[FILELOCK_1MS]) / 1000:.2f} ms (1 ms poll)"
    out = []
    for name, kind in ((THREADS, "threads"), (ASYNCIO, "asyncio")):
        p50, p99 = median(results[name]), percentile(results[name], 99)
        floor = ""
        if name == ASYNCIO and LOOP in results:  # what any task pays: its loop's wake
            loop50 = median(results[LOOP])
            floor = f"; an idle loop's wake alone {loop50:.0f} µs (ours {p50 / loop50:.2f}x)"
        out.append(
            Figure(
                f"cross-process hand-off p50, {kind} (file://)",
                f"{p50:.0f} µs = {p50 / raw50:.2f}x raw",
                f"raw flock {raw50:.0f} µs{floor}; {polls}",
                f"<= {TARGET_RATIO:g}x raw",
                p50 <= TARGET_RATIO * raw50,
            )
        )
        out.append(
            Figure(
                f"cross-process hand-off p99, {kind} (file://)",
                f"{p99:.0f} µs",
                f"raw flock p99 {raw99:.0f} µs",
                f"< {TARGET_P99_US:g} µs",
                p99 < TARGET_P99_US,
            )
        )
    return out


def figures(quick: bool) -> list[Figure]:
    """The wake-latency figures (part 1) for ``python -m benchmarks``; redis is not built."""
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o700)
        return wake_figures(measure_wake(directory, quick))


# -- 2. uncontended overhead --------------------------------------------------------------


def part_overhead(directory: str, quick: bool) -> None:
    from sessionlock.core import Core
    from sessionlock.wsgi import SessionLockMiddleware

    print("\n2. Uncontended cost per request, in process (µs, median of rounds)")
    rounds, per_round = (5, 2000) if quick else (15, 10000)
    backends = {"memory": "memory://", "file": f"file://{directory}/overhead"}
    cores = {name: Core(backend=url, key="header:X-S") for name, url in backends.items()}
    apps = {
        name: SessionLockMiddleware(hello, backend=url, key="header:X-S")
        for name, url in backends.items()
    }
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_S": "bench-session"}

    def enter_leave(core: Core) -> float:
        start = time.perf_counter()
        for _ in range(per_round):
            admission = core.admit(environ)
            assert admission is not None
            core.enter(admission)
            core.leave(admission)
        return (time.perf_counter() - start) / per_round * 1e6

    def request(app: Any) -> float:
        start = time.perf_counter()
        for _ in range(per_round):
            result = app(dict(environ), lambda *args: None)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:  # the app's own list once the lock went with the head
                close()
        return (time.perf_counter() - start) / per_round * 1e6

    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # interleaved, so load hits both alike
        for name in backends:
            timings.setdefault(("Core.enter + leave", name), []).append(enter_leave(cores[name]))
            timings.setdefault(("WSGI request, minimal app", name), []).append(request(apps[name]))
    rows = []
    for what in ("Core.enter + leave", "WSGI request, minimal app"):
        memory, file = median(timings[what, "memory"]), median(timings[what, "file"])
        rows.append(
            [what, f"{memory:.1f}", f"{file:.1f}", f"+{file - memory:.1f}", f"{file / memory:.2f}x"]
        )
    print_table(["path", "memory µs", "file µs", "file - memory", "file/memory"], rows)


# -- 3. bounded files ---------------------------------------------------------------------


def part_files(directory: str, quick: bool) -> None:
    from sessionlock.backends.file import FileBackend

    print("\n3. Files left after many distinct keys")
    count = 10_000 if quick else 100_000
    rows = []
    backend = FileBackend(os.path.join(directory, "churn"))
    start = time.perf_counter()
    for number in range(count):
        lease = backend.try_acquire(f"{number:032x}")
        assert lease is not None
        backend.release(lease)
    spent = time.perf_counter() - start
    for thread in threading.enumerate():
        if thread.name == "sessionlock-file-janitor":
            thread.join()
    left = len([n for n in os.listdir(backend.directory) if n.endswith(".lock")])
    rows.append([f"{count} keys locked + released", left, f"{spent / count * 1e6:.1f}"])
    backend.sweep()
    left = len([n for n in os.listdir(backend.directory) if n.endswith(".lock")])
    rows.append(["  then sweep() (as at the next start)", left, ""])

    now = [1_000_000.0]
    values = FileBackend(os.path.join(directory, "values"), clock=lambda: now[0])
    start = time.perf_counter()
    for number in range(count):
        values.set(f"{number:032x}", "latest cookie", 60.0)
        now[0] += 1.0  # one write a second: a value lives 60 writes
    spent = time.perf_counter() - start
    left = len([n for n in os.listdir(values.directory) if n.endswith(".value")])
    rows.append([f"{count} values set, TTL 60 s", left, f"{spent / count * 1e6:.1f}"])
    print_table(["workload", "files left", "µs per key"], rows)


# -- 4. gunicorn throughput ---------------------------------------------------------------


@contextlib.contextmanager
def _gunicorn(app: str) -> Iterator[int]:
    port = free_port()
    command = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    command += ["--worker-class", "gthread", "--threads", "4", "--log-level", "warning", app]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                http_get(port, "probe")
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.05)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def http_get(port: int, sid: str, conn: http.client.HTTPConnection | None = None) -> None:
    own = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    own.request("GET", "/", headers={"Cookie": f"sid={sid}"})
    response = own.getresponse()
    response.read()
    assert response.status == 200
    if conn is None:
        own.close()


def _client(port: int, sid: str, seconds: float, out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        http_get(port, sid, conn)
        done += 1
    conn.close()
    out.put(done)


def load(port: int, seconds: float, clients: int = 8) -> float:
    """Requests per second from ``clients`` processes, each its own session."""
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = context.Queue()
    pool = [
        context.Process(target=_client, args=(port, f"session-{n}-{port}", seconds, out))
        for n in range(clients)
    ]
    for process in pool:
        process.start()
    total = sum(out.get(timeout=seconds + 60) for _ in pool)
    for process in pool:
        process.join()
    return total / seconds


def part_gunicorn(directory: str, quick: bool) -> None:
    print("\n4. Distinct sessions through gunicorn -w 2 gthread, minimal app (requests/s)")
    rounds, seconds = (2, 1.0) if quick else (6, 3.0)
    wrapped_app = (
        f'sessionlock.gunicorn:wrap("benchmarks.bench_file:hello",'
        f' backend="file://{directory}/gunicorn", key="cookie:sid")'
    )
    bare_rates: list[float] = []
    wrapped_rates: list[float] = []
    ratios: list[float] = []
    with _gunicorn("benchmarks.bench_file:hello") as bare, _gunicorn(wrapped_app) as wrapped:
        load(bare, 0.5)
        load(wrapped, 0.5)  # warm up both
        for index in range(rounds):
            order = [(bare, bare_rates), (wrapped, wrapped_rates)]
            for port, rates in order if index % 2 == 0 else order[::-1]:
                rates.append(load(port, seconds))
            ratios.append(wrapped_rates[-1] / bare_rates[-1])
    print_table(
        ["variant", "req/s (median)", "ratio"],
        [
            ["bare", f"{median(bare_rates):.0f}", "1.00x"],
            ["wrapped, file backend", f"{median(wrapped_rates):.0f}", f"{median(ratios):.2f}x"],
        ],
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o700)
        wake = part_wake(directory, args.quick)
        part_overhead(directory, args.quick)
        part_files(directory, args.quick)
        part_gunicorn(directory, args.quick)
    print()
    print_figures(wake)


if __name__ == "__main__":
    main()
