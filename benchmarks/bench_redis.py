"""The Redis backend: cross-process hand-off latency against its peers, round trips per request.

    .venv/bin/pip install python-redis-lock                # optional: one more peer
    .venv/bin/python -m benchmarks.bench_redis             # about 40 s
    .venv/bin/python -m benchmarks.bench_redis --quick     # seconds: checks that it works

Starts its own redis-server (Debian's, on a free loopback port, no persistence).

1. Hand-off latency across processes: a holder process releases, a waiter process already
   waiting on the same key runs; time from just before the release to the waiter's first
   instruction (CLOCK_MONOTONIC is shared by processes). Ours (``Core.enter`` over
   ``redis://``, threads; and ``enter_async``, tasks) vs the floor, a raw ``RPUSH`` that
   wakes a raw ``BLPOP``, vs redis-py's ``Lock`` (it polls: ``sleep=0.1`` by default, and
   ``sleep=0.001``) and python-redis-lock (``BLPOP`` on a signal list), if installed. The
   holder releases at a random moment (seeded), 2 ms plus up to one poll interval after the
   waiter started waiting, so a poller is caught anywhere in its interval.
   Target: ours p50 <= 2 ms on loopback.
2. Round trips per uncontended request (``Core.enter`` + ``Core.leave``), counted as redis-py
   sends them, and the µs such a request takes against one raw round trip (``PING``).
   Target: 2 round trips.
"""

from __future__ import annotations

import asyncio
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from benchmarks._figures import Figure, print_figures
from benchmarks._handoff import hand_off
from benchmarks._table import median, parse_args, percentile, print_table

KEY = "bench-session"
SEED = 20241201
TARGET_P50_MS = 2.0


class Variant:
    """A lock both processes can take: hold/release in the holder, wait in the waiter."""

    poll = 0.0  # seconds between a poller's attempts (0: woken by the release)

    def setup(self, url: str) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def wait(self) -> None:
        """Block until the lock is ours (the timestamp is taken right after)."""

    def done(self) -> None:
        """Give the lock back after a sample."""


class RawPush(Variant):
    """The floor: one RPUSH wakes one BLPOP (no lock at all)."""

    def setup(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.client.delete("bench:raw")

    def release(self) -> None:
        self.client.rpush("bench:raw", "1")

    def wait(self) -> None:
        self.client.blpop(["bench:raw"], timeout=0)


class RedisPyLock(Variant):
    poll = 0.1  # redis-py's default sleep between attempts

    def setup(self, url: str) -> None:
        import redis

        self.lock = redis.Redis.from_url(url).lock("bench:redis-py", sleep=self.poll)

    def hold(self) -> None:
        self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    wait = hold
    done = release


class RedisPyLock1ms(RedisPyLock):
    poll = 0.001


class PythonRedisLock(Variant):
    def setup(self, url: str) -> None:
        import redis
        import redis_lock  # type: ignore[import-untyped]

        self.lock = redis_lock.Lock(redis.Redis.from_url(url), "bench:python-redis-lock")

    def hold(self) -> None:
        self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    wait = hold
    done = release


class Ours(Variant):
    def setup(self, url: str) -> None:
        from sessionlock.core import Core

        self.core = Core(backend=url, key="header:X-S", timeout=60.0, secret=b"bench" * 8)

    def _admission(self) -> Any:
        return self.core.admit({"REQUEST_METHOD": "GET", "HTTP_X_S": KEY})

    def hold(self) -> None:
        self.admission = self._admission()
        self.core.enter(self.admission)

    def release(self) -> None:
        self.core.leave(self.admission)

    wait = hold
    done = release


class OursAsync(Ours):
    def setup(self, url: str) -> None:
        super().setup(url)
        self.loop = asyncio.new_event_loop()

    def wait(self) -> None:
        self.admission = self._admission()
        never: asyncio.Future[None] = self.loop.create_future()
        self.loop.run_until_complete(self.core.enter_async(self.admission, lambda: never))

    def done(self) -> None:
        self.loop.run_until_complete(self.core.leave_async(self.admission))


RAW, THREADS, ASYNCIO = "raw RPUSH -> BLPOP", "ours, threads", "ours, asyncio"
REDIS_PY, REDIS_PY_1MS = "redis-py Lock, default sleep=0.1", "redis-py Lock, sleep=0.001"
PRL = "python-redis-lock (BLPOP)"
VARIANTS: dict[str, type[Variant]] = {
    RAW: RawPush,
    THREADS: Ours,
    ASYNCIO: OursAsync,
    REDIS_PY: RedisPyLock,
    REDIS_PY_1MS: RedisPyLock1ms,
    PRL: PythonRedisLock,
}


def _available(name: str) -> bool:
    if name != PRL:
        return True
    try:
        import redis_lock  # noqa: F401
    except ImportError:
        return False
    return True


def round_trip_us(url: str, n: int) -> float:
    """One raw round trip (PING), µs, median of ``n``."""
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        client.ping()
        times.append((time.perf_counter_ns() - start) / 1000)
    client.close()
    return median(times)


def round_trips_per_request(url: str, n: int) -> tuple[float, float]:
    """(round trips per uncontended request, µs per request), ``Core`` on ours.

    Counted where they leave: each command (or pipeline) redis-py sends. The server's own
    count would include the commands our Lua scripts run inside one round trip.
    """
    from redis.connection import Connection

    from sessionlock.core import Core

    core = Core(backend=url, key="header:X-S", timeout=60.0, secret=b"bench" * 8)
    environ = {"REQUEST_METHOD": "GET", "HTTP_X_S": "uncontended"}

    def one() -> None:
        admission = core.admit(environ)
        assert admission is not None
        core.enter(admission)
        core.leave(admission)

    one()  # scripts loaded, connection open
    sent = [0]
    send: Any = Connection.send_packed_command

    def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        send(self, command, check_health)

    setattr(Connection, "send_packed_command", counted)  # noqa: B010 (mypy: a method)
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            one()
        elapsed = (time.perf_counter_ns() - start) / 1000 / n
    finally:
        setattr(Connection, "send_packed_command", send)  # noqa: B010
        core.backend.close()
    return sent[0] / n, elapsed


def run(quick: bool) -> tuple[dict[str, list[float]], float, float, float]:
    from tests.redis_server import RedisServer

    server = RedisServer()
    server.start()
    try:
        samples = 20 if quick else 200
        latencies: dict[str, list[float]] = {}
        names = [name for name in VARIANTS if _available(name)]
        rounds = 1 if quick else 2  # interleaved, so machine load hits every variant alike
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                count = samples // 4 if VARIANTS[name].poll >= 0.1 else samples
                latencies.setdefault(name, []).extend(
                    hand_off("benchmarks.bench_redis", name, server.url, count, SEED)
                )
        rtt = round_trip_us(server.url, 200 if quick else 5000)
        commands, per_request = round_trips_per_request(server.url, 200 if quick else 5000)
    finally:
        server.close()
    return latencies, rtt, commands, per_request


def figures(quick: bool) -> list[Figure]:
    from tests.redis_server import REDIS_SERVER

    if not os.path.exists(REDIS_SERVER):
        why = "apt-get install redis-server"
        return [
            Figure.unavailable("redis:// cross-process hand-off p50 ms", "<= 2 ms", why),
            Figure.unavailable("redis:// round trips per uncontended request", "2", why),
        ]
    latencies, rtt, commands, _ = run(quick)
    return _figures(latencies, rtt, commands)


def _figures(latencies: dict[str, list[float]], rtt: float, commands: float) -> list[Figure]:
    def p(name: str, q: float) -> float:
        return percentile(latencies[name], q) / 1000

    peers = ", ".join(
        f"{name} {p(name, 50):.2f}" for name in (REDIS_PY, REDIS_PY_1MS, PRL) if name in latencies
    )
    ours50 = p(THREADS, 50)
    return [
        Figure(
            "redis:// cross-process hand-off p50 ms, threads / asyncio",
            f"{ours50:.2f} / {p(ASYNCIO, 50):.2f}",
            f"raw push {p(RAW, 50):.2f}; {peers}",
            f"<= {TARGET_P50_MS:g} ms",
            max(ours50, p(ASYNCIO, 50)) <= TARGET_P50_MS,
        ),
        Figure(
            "redis:// round trips per uncontended request",
            f"{commands:.2f}",
            f"one round trip {rtt:.0f} µs",
            "2 (acquire, release)",
            commands <= 2.0,
        ),
    ]


def main() -> None:
    args = parse_args(__doc__ or "")
    latencies, rtt, commands, per_request = run(args.quick)
    raw50 = percentile(latencies[RAW], 50)
    rows = []
    for name, values in latencies.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rows.append([name, len(values), f"{p50:.0f}", f"{p99:.0f}", f"{p50 / raw50:.1f}x"])
    print("1. hand-off across processes, µs from release to the waiter running")
    print_table(["variant", "samples", "p50 µs", "p99 µs", "p50 / raw"], rows)
    print()
    print("2. uncontended requests (Core.enter + Core.leave on redis://)")
    print_table(
        ["figure", "value"],
        [
            ["round trips per request", f"{commands:.2f}"],
            ["µs per request (in this process)", f"{per_request:.0f}"],
            ["one raw round trip (PING), µs", f"{rtt:.0f}"],
        ],
    )
    print()
    print_figures(_figures(latencies, rtt, commands))


if __name__ == "__main__":
    main()
