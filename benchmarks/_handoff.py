"""The cross-process hand-off measurement of bench_file and bench_redis.

The holder is this process, the waiter a spawned one. Each sample: the holder holds, the waiter
starts waiting, the holder releases at a seeded random point (SETTLE plus up to one poll
interval later, so a poller is caught anywhere in its interval), and the waiter reports when
it ran. A variant is a class in ``module.VARIANTS`` with ``setup(target)``, ``hold()``,
``release()``, ``wait()``, ``done()`` and ``poll`` (seconds between a poller's attempts; 0:
woken by the release); the child finds it by module and name, as spawn needs.
"""

from __future__ import annotations

import importlib
import multiprocessing
import random
import time
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["SETTLE", "hand_off"]

SETTLE = 0.002  # seconds the holder waits so the waiter surely waits


def _variant(module: str, name: str, target: str) -> Any:
    variant = importlib.import_module(module).VARIANTS[name]()
    variant.setup(target)
    return variant


def _waiter(module: str, name: str, target: str, samples: int, pipe: Connection) -> None:
    variant = _variant(module, name, target)
    pipe.send("ready")
    latencies = []
    for _ in range(samples):
        pipe.recv()  # the holder holds: start waiting
        pipe.send("waiting")
        variant.wait()
        woke = time.monotonic_ns()
        released = pipe.recv()
        latencies.append((woke - released) / 1000)
        variant.done()
        pipe.send("done")
    pipe.send(latencies)


def hand_off(module: str, name: str, target: str, samples: int, seed: int) -> list[float]:
    """µs from the holder's release to the waiter running, ``samples`` times."""
    variant = _variant(module, name, target)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    waiter = context.Process(target=_waiter, args=(module, name, target, samples, theirs))
    waiter.start()
    assert ours.recv() == "ready"
    schedule = random.Random(seed)
    spread = max(variant.poll, 0.001)
    for _ in range(samples):
        variant.hold()
        ours.send("hold")
        assert ours.recv() == "waiting"
        time.sleep(SETTLE + schedule.uniform(0.0, spread))  # the release at a random point
        released = time.monotonic_ns()
        variant.release()
        ours.send(released)
        assert ours.recv() == "done"
    latencies: list[float] = ours.recv()
    waiter.join(30)
    return latencies
