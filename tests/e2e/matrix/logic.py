"""The session logic every matrix app runs, framework-neutral.

Routes (each answers the session as JSON; ``GET`` or ``POST``):

- ``/start``: the session begins (``started``), so a server-side session has its id cookie;
- ``/incr``: ``n`` read, some work (the window of a lost update), ``n + 1`` written;
- ``/login``: ``user`` set; ``/touch``: if logged in, ``seen + 1`` after longer work;
- ``/logout``: some work (revoking tokens...), then the session cleared the framework's way
  (each app passes its ``clear``);
- ``/corrupt``: a handler bug: ``idx`` past the end of ``items``, for the rule to repair;
- ``/meet?room=R&n=2&timeout=T``: waits inside the app until ``n`` requests are in the room
  at once: ``{"met": true}`` proves those requests were not serialized.

MATRIX_MODE: ``locked`` (default: the lock and the rules) or ``bare`` (neither).
MATRIX_WORK: seconds of work per increment (default 0.05).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from sessionlock.rules import Ruleset, index_within

SECRET = "matrix-e2e-secret-0123456789abcdef"  # 34 bytes: long enough for every framework
RULES = Ruleset([index_within("idx", "items")], header="X-Session-Repaired")


def locked() -> bool:
    mode = os.environ.get("MATRIX_MODE", "locked")
    if mode not in ("locked", "bare"):
        raise ValueError(f"MATRIX_MODE must be locked or bare, not {mode!r}")
    return mode == "locked"


def _work() -> float:
    return float(os.environ.get("MATRIX_WORK", "0.05"))


def state(session: Mapping[str, Any]) -> dict[str, Any]:
    """The session as the client sees it (Beaker's bookkeeping keys left out)."""
    return {key: value for key, value in session.items() if not key.startswith("_")}


Clear = Callable[[], object]


def steps(op: str, session: MutableMapping[str, Any], clear: Clear) -> Iterator[float]:
    """Run ``op`` on the session; each yielded number is a pause (seconds of work)."""
    if op == "start":
        session["started"] = True
    elif op == "incr":
        n = session.get("n", 0)
        yield _work()
        session["n"] = n + 1
    elif op == "login":
        session["user"] = "alice"
    elif op == "touch":
        if "user" in session:
            seen = session.get("seen", 0)
            yield 4 * _work()
            session["seen"] = seen + 1
    elif op == "logout":
        yield _work()
        clear()
    elif op == "corrupt":
        session["items"] = [1, 2, 3]
        session["idx"] = 7
    elif op != "state":
        raise LookupError(op)


def run(op: str, session: MutableMapping[str, Any], clear: Clear) -> dict[str, Any]:
    for pause in steps(op, session, clear):
        time.sleep(pause)  # the handler's work, between its read and its write
    return {} if op == "logout" else state(session)


async def run_async(op: str, session: MutableMapping[str, Any], clear: Clear) -> dict[str, Any]:
    for pause in steps(op, session, clear):
        await asyncio.sleep(pause)
    return {} if op == "logout" else state(session)


class Rooms:
    """Rendezvous inside one server process: threads wait on a condition, tasks poll."""

    def __init__(self) -> None:
        self._arrived: dict[str, int] = {}
        self._changed = threading.Condition()

    def _arrive(self, room: str) -> None:
        with self._changed:
            self._arrived[room] = self._arrived.get(room, 0) + 1
            self._changed.notify_all()

    def meet(self, query: Mapping[str, str]) -> dict[str, bool]:
        room, wanted, timeout = _room(query)
        self._arrive(room)
        with self._changed:
            met = self._changed.wait_for(lambda: self._arrived[room] >= wanted, timeout)
        return {"met": met}

    async def meet_async(self, query: Mapping[str, str]) -> dict[str, bool]:
        room, wanted, timeout = _room(query)
        self._arrive(room)
        deadline = time.monotonic() + timeout
        while self._arrived[room] < wanted:
            if time.monotonic() > deadline:
                return {"met": False}
            await asyncio.sleep(0.005)  # the app waits for its peers: that is its job here
        return {"met": True}


def _room(query: Mapping[str, str]) -> tuple[str, int, float]:
    return query["room"], int(query.get("n", "2")), float(query.get("timeout", "10"))


ROOMS = Rooms()
