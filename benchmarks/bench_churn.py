"""Churn: a million distinct sessions through the core; nothing may stay behind.

    .venv/bin/python -m benchmarks.bench_churn [--quick]

Each key (``key="cookie:sid"``, memory backend) is admitted, entered and left, one at a
time, then again with 1 000 keys held at once per batch (the lock table grows, then must
empty). After each variant: the lock-table size (``len(core.queue)``), the backend's stored
values, and the RSS growth after ``gc.collect()``, from ``/proc/self/statm``. The control
builds the same environs and hashes the same keys without the lock, to show what the
interpreter's allocator keeps by itself. Targets: table empty, RSS growth < 10 MB.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from sessionlock import keys
from sessionlock.core import Admission, Core

from ._table import parse_args, print_table, rss_bytes

TARGET_MB = 10.0
BATCH = 1000


def environ(i: int) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": f"sid={i:032x}"}


def control(core: Core, start: int, n: int) -> None:
    """No lock: build the environ and hash the key, as admit does."""
    secret = core.secret
    for i in range(start, start + n):
        keys.hash_key(secret, keys.read_cookie(environ(i), "sid") or "")


def one_at_a_time(core: Core, start: int, n: int) -> None:
    for i in range(start, start + n):
        admission = core.admit(environ(i))
        assert admission is not None
        core.enter(admission)
        core.leave(admission)


def batched(core: Core, start: int, n: int) -> None:
    """BATCH keys held at once, then all released."""
    for first in range(start, start + n, BATCH):
        held: list[Admission] = []
        for i in range(first, min(first + BATCH, start + n)):
            admission = core.admit(environ(i))
            assert admission is not None
            core.enter(admission)
            held.append(admission)
        for admission in held:
            core.leave(admission)


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    n = 100_000 if args.quick else 1_000_000
    variants: dict[str, Callable[[Core, int, int], None]] = {
        "control (no lock)": control,
        "one key at a time": one_at_a_time,
        f"{BATCH} keys held per batch": batched,
    }
    cores = {name: Core(backend="memory://", key="cookie:sid") for name in variants}
    next_key = 0
    for name, run in variants.items():  # warm up every path and the allocator's pools
        run(cores[name], next_key, 10_000)
        next_key += 10_000

    rows: list[list[str]] = []
    for name, run in variants.items():
        core = cores[name]
        before = settled_rss()
        started = time.perf_counter()
        run(core, next_key, n)
        elapsed = time.perf_counter() - started
        next_key += n
        growth = (settled_rss() - before) / 2**20
        table = len(core.queue)
        stored = len(core.backend)  # type: ignore[arg-type]  # MemoryBackend has __len__
        lock_ok = name.startswith("control") or table == 0
        verdict = "yes" if lock_ok and growth < TARGET_MB else "NO"
        figures = [f"{n:,}", f"{elapsed / n * 1e6:.2f}", str(table), str(stored)]
        rows.append([name, *figures, f"{growth:.2f}", verdict])

    print(f"churn: {n:,} distinct keys per variant, memory backend, key=cookie:sid")
    headers = ["variant", "keys", "µs/key", "lock table", "stored values", "RSS growth MB"]
    print_table([*headers, f"empty, < {TARGET_MB:g} MB"], rows)


if __name__ == "__main__":
    main()
