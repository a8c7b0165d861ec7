"""The floor: the least a per-session lock middleware can do, as an anchor for our overhead.

Find the key in the ``Cookie`` header (a string search), take that key's in-process lock
from a dict, and release it when the response head goes out. Nothing else: no signed
identity (a client could pick anyone's key), no hashing (raw ids as dict keys), no FIFO
queue, no timeout or queue cap, no cross-process backend, no cookie tracking, no
Server-Timing, no cleanup of the dict (it grows with every key). Unsafe to ship; it is here
so the benchmarks can say how far above the cheapest possible middleware the real one is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sessionlock._types import Message, Receive, Scope, Send

__all__ = ["MinimalASGI", "MinimalWSGI"]

_NAME = b"sessionlock="


def _key(header: bytes) -> bytes | None:
    start = header.find(_NAME)
    if start == -1:
        return None
    end = header.find(b";", start)
    return header[start + len(_NAME) : end if end != -1 else len(header)]


class MinimalASGI:
    """One ``asyncio.Lock`` per key, released at ``http.response.start``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app
        self.locks: dict[bytes, asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = None
        if scope["type"] == "http":
            key = next((_key(v) for n, v in scope["headers"] if n == b"cookie"), None)
        if key is None:
            await self.app(scope, receive, send)
            return
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        await lock.acquire()
        held = True

        async def send_released(message: Message) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                lock.release()
            await send(message)

        try:
            await self.app(scope, receive, send_released)
        finally:
            if held:
                lock.release()


class MinimalWSGI:
    """One ``threading.Lock`` per key, released by ``start_response``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.locks: dict[bytes, threading.Lock] = {}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        header = environ.get("HTTP_COOKIE")
        key = _key(header.encode("latin-1")) if header else None
        if key is None:
            return self.app(environ, start_response)
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks.setdefault(key, threading.Lock())
        lock.acquire()
        held = [True]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if held[0]:
                held[0] = False
                lock.release()
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            if held[0]:
                held[0] = False
                lock.release()
