"""ASGI: a cookie record is written after the response head, off the loop, and the session is
released only once it is written (sessionlock.core.Core.leave_after)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from sessionlock.asgi import SessionLockMiddleware
from sessionlock.backends.base import Lease
from sessionlock.backends.file import FileBackend


class SlowFile(FileBackend):
    """A file backend whose record writes wait until the test lets them go on."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.writing = threading.Event()
        self.proceed = threading.Event()
        self.released = threading.Event()
        self.writers: list[str] = []
        self.events: list[str] = []
        self.slow = False

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.writers.append(threading.current_thread().name)
        self.events.append("write")
        if self.slow:
            self.writing.set()
            assert self.proceed.wait(30)
        super().set(key, value, ttl)

    def release(self, lease: Lease) -> None:
        super().release(lease)
        self.released.set()


def _app(counter: list[int]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        counter[0] += 1
        headers = [(b"set-cookie", f"session=v{counter[0]}; Path=/".encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _call(
    app: Any, cookie: str, events: list[str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "scheme": "http",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
        "server": ("testserver", 80),
    }

    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.get_running_loop().create_future()  # as a server: nothing more comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if events is not None:
            events.append(message["type"])

    await app(scope, receive, send)
    jar = cookie
    for name, value in sent[0]["headers"]:
        if name == b"set-cookie":
            pair = value.decode().partition(";")[0]
            jar = "; ".join(
                [p for p in jar.split("; ") if p and not p.startswith(pair.split("=")[0] + "=")]
                + [pair]
            )
    return sent, jar


def test_the_head_goes_out_before_the_record_is_written_and_the_lock_waits_for_it(
    tmp_path: Path,
) -> None:
    backend = SlowFile(str(tmp_path / "locks"))
    app = SessionLockMiddleware(_app([0]), backend=backend, cookie_session="session")

    async def scenario() -> None:
        _, jar = await _call(app, "")  # first visit: identity issued, record written
        _, jar = await _call(app, jar)  # a returning browser
        assert await asyncio.to_thread(backend.released.wait, 30)  # its write is done too
        backend.slow = True
        backend.released.clear()
        sent, jar = await _call(app, jar)  # its write now waits for the test
        # The whole response went out while the record's write had not even finished...
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert await asyncio.to_thread(backend.writing.wait, 30)
        # ... and the session stays held until it has.
        assert not backend.released.is_set()
        assert backend.held() == 1
        backend.proceed.set()
        assert await asyncio.to_thread(backend.released.wait, 30)
        assert backend.held() == 0

    asyncio.run(scenario())
    loop_thread = threading.current_thread().name
    assert backend.writers[-1] != loop_thread  # written off the event loop
    backend.close()


def test_the_next_request_reads_what_was_written_after_the_head(tmp_path: Path) -> None:
    """A stale replay (an older jar) right after a deferred write gets the newest cookie."""
    backend = SlowFile(str(tmp_path / "locks"))
    other = SlowFile(str(tmp_path / "locks"))  # another process's view: reads the file
    counter = [0]
    app = SessionLockMiddleware(_app(counter), backend=backend, cookie_session="session")
    seen: list[str] = []

    async def app_seeing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        cookie = dict(scope["headers"]).get(b"cookie", b"").decode()
        seen.append(cookie)
        await _app(counter)(scope, receive, send)

    watching = SessionLockMiddleware(app_seeing, backend=other, cookie_session="session")

    async def scenario() -> None:
        _, jar = await _call(app, "")
        _, old = await _call(app, jar)
        _, jar = await _call(app, old)  # written after its head
        await _call(watching, old)  # the old jar, in "another process": handed the newest

    asyncio.run(scenario())
    assert "session=v3" in seen[-1]
    backend.close()
    other.close()


def test_a_first_visit_is_recorded_before_its_head_goes_out(tmp_path: Path) -> None:
    """A brand-new identity's lease holds no lock: were its record written after the head,
    the browser's next request could run first and read nothing (or be overwritten)."""
    backend = SlowFile(str(tmp_path / "locks"))
    app = SessionLockMiddleware(_app([0]), backend=backend, cookie_session="session")
    asyncio.run(_call(app, "", backend.events))
    assert backend.events == ["write", "http.response.start", "http.response.body"]
    backend.close()
