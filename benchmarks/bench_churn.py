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
from dataclasses import dataclass
from typing import Any

from sessionlock import keys
from sessionlock.core import Admission, Core

from ._figures import Figure, print_figures
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


CONTROL = "control (no lock)"


@dataclass
class Result:
    keys: int
    seconds: float
    table: int  # keys left in the lock table
    stored: int  # values left in the backend
    growth_mb: float  # RSS growth after gc.collect()


def measure(quick: bool) -> dict[str, Result]:
    n = 100_000 if quick else 1_000_000
    variants: dict[str, Callable[[Core, int, int], None]] = {
        CONTROL: control,
        "one key at a time": one_at_a_time,
        f"{BATCH} keys held per batch": batched,
    }
    cores = {name: Core(backend="memory://", key="cookie:sid") for name in variants}
    next_key = 0
    for name, run in variants.items():  # warm up every path and the allocator's pools
        run(cores[name], next_key, 10_000)
        next_key += 10_000

    results: dict[str, Result] = {}
    for name, run in variants.items():
        core = cores[name]
        before = settled_rss()
        started = time.perf_counter()
        run(core, next_key, n)
        elapsed = time.perf_counter() - started
        next_key += n
        growth = (settled_rss() - before) / 2**20
        stored = len(core.backend)  # type: ignore[arg-type]  # MemoryBackend has __len__
        results[name] = Result(n, elapsed, len(core.queue), stored, growth)
    return results


def _met(name: str, result: Result) -> bool:
    lock_ok = name == CONTROL or (result.table == 0 and result.stored == 0)
    return lock_ok and result.growth_mb < TARGET_MB


def figures_from(results: dict[str, Result]) -> list[Figure]:
    control = results[CONTROL]
    return [
        Figure(
            f"churn, {result.keys:,} distinct keys, {name}: lock table, RSS growth",
            f"{result.table} keys, {result.stored} values, +{result.growth_mb:.2f} MB",
            f"control (no lock) +{control.growth_mb:.2f} MB",
            f"0 keys, 0 values, < {TARGET_MB:g} MB",
            _met(name, result),
        )
        for name, result in results.items()
        if name != CONTROL
    ]


def figures(quick: bool) -> list[Figure]:
    return figures_from(measure(quick))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    results = measure(args.quick)
    rows: list[list[str]] = []
    for name, r in results.items():
        verdict = "yes" if _met(name, r) else "NO"
        figures = [f"{r.keys:,}", f"{r.seconds / r.keys * 1e6:.2f}", str(r.table), str(r.stored)]
        rows.append([name, *figures, f"{r.growth_mb:.2f}", verdict])
    n = results[CONTROL].keys
    print(f"churn: {n:,} distinct keys per variant, memory backend, key=cookie:sid")
    headers = ["variant", "keys", "µs/key", "lock table", "stored values", "RSS growth MB"]
    print_table([*headers, f"empty, < {TARGET_MB:g} MB"], rows)
    print()
    print_figures(figures_from(results))


if __name__ == "__main__":
    main()
