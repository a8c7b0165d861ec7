"""ASGI: where and when a cookie record is written (sessionlock.core.Core.records_inline).

A returning browser's record is one pwrite into the lock file its lease holds, made on the
loop before the head; a first visit's (a file of its own) in a worker thread before the head;
a file system found slow moves them all to worker threads."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from sessionlock.asgi import SessionLockMiddleware
from sessionlock.backends import file
from sessionlock.backends.base import Lease
from sessionlock.backends.file import FileBackend


class WatchedFile(FileBackend):
    """A file backend that says on which thread, and when, each record was written."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.writers: list[str] = []
        self.events: list[str] = []

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.writers.append(threading.current_thread().name)
        self.events.append("first record")
        super().set(key, value, ttl)

    def store(self, lease: Lease, value: str | None, ttl: float | None) -> int | None:
        self.writers.append(threading.current_thread().name)
        self.events.append("record")
        return super().store(lease, value, ttl)

    def release(self, lease: Lease) -> None:
        self.events.append("released")
        super().release(lease)


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


async def _requests(app: Any, jar: str, count: int) -> tuple[str, str]:
    """``count`` requests in a row, each with the jar the last one left; (jar, loop thread)."""
    for _ in range(count):
        _, jar = await _call(app, jar)
    return jar, threading.current_thread().name


def test_a_returning_browser_s_record_is_written_before_its_head_on_the_held_file(
    tmp_path: Path,
) -> None:
    """On the loop: a pwrite on the descriptor the lease holds (no thread hop), then the head,
    then the release."""
    backend = WatchedFile(str(tmp_path / "locks"))
    app = SessionLockMiddleware(_app([0]), backend=backend, cookie_session="session")
    assert backend.inline_records

    async def scenario() -> str:
        _, jar = await _call(app, "")  # first visit: identity issued, its first record
        backend.events.clear()
        await _call(app, jar, backend.events)  # a returning browser
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    assert backend.events == ["record", "released", "http.response.start", "http.response.body"]
    assert backend.writers[-1] == loop_thread
    backend.close()


def test_a_first_visit_is_recorded_in_a_worker_thread_before_its_head_goes_out(
    tmp_path: Path,
) -> None:
    """A brand-new identity's lease holds no lock: were its record written after the head,
    the browser's next request could run first and read nothing. It is a file of its own
    (created), so it is written off the loop."""
    backend = WatchedFile(str(tmp_path / "locks"))
    app = SessionLockMiddleware(_app([0]), backend=backend, cookie_session="session")

    async def scenario() -> str:
        await _call(app, "", backend.events)
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    assert backend.events == ["first record", "http.response.start", "http.response.body"]
    assert len(backend.writers) == 1
    assert backend.writers[0] != loop_thread
    backend.close()


def test_a_slow_file_system_moves_record_writes_off_the_loop_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = WatchedFile(str(tmp_path / "locks"))
    app = SessionLockMiddleware(_app([0]), backend=backend, cookie_session="session")

    # Control: at the real threshold, every write of this test's file system stays inline.
    jar, loop_thread = asyncio.run(_requests(app, "", file._SLOW_STREAK + 2))
    assert backend.inline_records
    assert set(backend.writers[1:]) == {loop_thread}
    monkeypatch.setattr(file, "_SLOW_RECORD", -1.0)  # every write now counts as slow
    backend.writers.clear()
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        jar, loop_thread = asyncio.run(_requests(app, jar, file._SLOW_STREAK + 2))
    assert not backend.inline_records
    assert backend.writers[: file._SLOW_STREAK] == [loop_thread] * file._SLOW_STREAK
    assert loop_thread not in backend.writers[file._SLOW_STREAK :]  # a worker thread's now
    warnings = [r for r in caplog.records if "off the event loop" in r.getMessage()]
    assert len(warnings) == 1
    backend.close()


def test_record_writes_come_back_to_the_loop_once_the_file_system_is_fast_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stall that passed (a paused VM, a profiler attached) must not cost every later
    write a thread hop: a streak of fast writes, timed in the worker threads, brings them
    back."""
    backend = WatchedFile(str(tmp_path / "locks"))
    app = SessionLockMiddleware(_app([0]), backend=backend, cookie_session="session")

    jar, _ = asyncio.run(_requests(app, "", 1))  # the first record: a file of its own
    with monkeypatch.context() as slow:
        slow.setattr(file, "_SLOW_RECORD", -1.0)  # every write counts as slow
        jar, _ = asyncio.run(_requests(app, jar, file._SLOW_STREAK))
    assert not backend.inline_records
    monkeypatch.setattr(file, "_FAST_STREAK", 8)
    backend.writers.clear()
    # Control: one write short of the streak, records stay off the loop.
    jar, loop_thread = asyncio.run(_requests(app, jar, 7))
    assert not backend.inline_records
    assert loop_thread not in backend.writers
    with caplog.at_level(logging.INFO, logger="sessionlock"):
        jar, loop_thread = asyncio.run(_requests(app, jar, 3))
    assert backend.inline_records
    assert backend.writers[-2:] == [loop_thread] * 2  # the eighth fast write was the switch
    assert [r for r in caplog.records if "on the event loop again" in r.getMessage()]
    backend.close()


def test_the_next_request_elsewhere_reads_what_was_written(tmp_path: Path) -> None:
    """A stale replay (an older jar) in "another process" gets the newest cookie."""
    backend = WatchedFile(str(tmp_path / "locks"))
    other = WatchedFile(str(tmp_path / "locks"))  # another process's view: reads the file
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
        _, jar = await _call(app, old)
        await _call(watching, old)  # the old jar, in "another process": handed the newest

    asyncio.run(scenario())
    assert "session=v3" in seen[-1]
    backend.close()
    other.close()
