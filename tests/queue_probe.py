"""A KeyedQueue that tells a test's gate each time it puts a request in line."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from sessionlock.queue import KeyedQueue


class Noting(Protocol):
    def note(self, event: str) -> None: ...


G = TypeVar("G", bound=Noting)


class GateQueue(KeyedQueue):
    """The middleware's queue, reporting each request it puts in line."""

    def __init__(self, gate: Noting) -> None:
        super().__init__()
        self.gate = gate

    def _enqueue(self, key: str, max_waiters: int, kind: Any, **more: Any) -> Any:
        waiter = super()._enqueue(key, max_waiters, kind, **more)
        if waiter is not None:
            self.gate.note("queued")
        return waiter


def probe(middleware: Any, gate: G) -> G:
    """Give ``middleware`` a queue that reports to ``gate``; returns the gate."""
    middleware.core.queue = GateQueue(gate)
    return gate
