"""Counter apps (WSGI and ASGI) with a real read-modify-write window, for real servers.

    SESSIONLOCK_TEST_DB=/tmp/x/counters.db SESSIONLOCK_TEST_WRAP=1 \
        gunicorn -w 4 --threads 8 tests.e2e.apps:wsgi_app
    SESSIONLOCK_TEST_DB=/tmp/x/counters.db uvicorn tests.e2e.apps:asgi_app

Each session (cookie ``sid``) has a counter in a SQLite file, so it is shared by threads,
tasks and worker processes alike. ``POST /incr`` reads the count, does its "work" (a sleep:
the window in which a concurrent request of the same session reads the same old count),
then writes count + 1, each statement in autocommit: nothing but the middleware orders them.
The app also records, per session and over all sessions, how many requests were inside it
at once (``max_inflight``): 1 for a session proves its requests never overlapped.

Routes: ``POST /incr`` -> {"count": n}; ``GET /stats`` -> the session's row and the
all-sessions maximum; ``GET /meet?room=R&n=2&timeout=10`` -> {"met": bool}, which waits in
the app until ``n`` requests are inside the room at once (so it can only succeed when those
requests are not serialized).

Configured by environment variables, for server command lines (``module:attr`` or
``--factory``): SESSIONLOCK_TEST_DB (the SQLite file, required), SESSIONLOCK_TEST_WRAP
(``1``, the default: wrapped in the middleware; ``0``: bare), SESSIONLOCK_TEST_BACKEND
(a backend URL; unset: the library's default), SESSIONLOCK_TEST_KEY (default
``cookie:sid``), SESSIONLOCK_TEST_WORK (seconds of work per increment, default 0.02).
Session ids are stored hashed (:func:`session_ref`), never raw.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ALL = "*"  # the row that counts requests of every session (hashes are hex: no clash)
COOKIE = "sid"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    sid TEXT PRIMARY KEY,
    count INTEGER NOT NULL DEFAULT 0,
    inflight INTEGER NOT NULL DEFAULT 0,
    max_inflight INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, arrived INTEGER NOT NULL DEFAULT 0);
"""


def session_ref(sid: str) -> str:
    """What the store keeps instead of the session id (ids are credentials)."""
    return hashlib.sha256(sid.encode()).hexdigest()


def connect(db: str | Path) -> sqlite3.Connection:
    """Autocommit, with a busy timeout so worker processes queue on SQLite's own lock."""
    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def init_db(db: str | Path) -> None:
    """Create the tables (WAL, so readers do not block the writer). Safe to call again."""
    conn = connect(db)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_SCHEMA)
    finally:
        conn.close()


@dataclass(frozen=True)
class SessionStats:
    count: int
    max_inflight: int
    requests: int


def read_stats(db: str | Path, sid: str | None) -> SessionStats:
    """A session's row (``sid=None``: the all-sessions row), read from the file directly."""
    conn = connect(db)
    try:
        row = conn.execute(
            "SELECT count, max_inflight, requests FROM counters WHERE sid = ?",
            (ALL if sid is None else session_ref(sid),),
        ).fetchone()
    finally:
        conn.close()
    return SessionStats(*row) if row else SessionStats(0, 0, 0)


class Store:
    """The counters: one short SQLite connection per request, safe in threads and processes."""

    def __init__(self, db: str | Path) -> None:
        self.db = db
        init_db(db)

    @contextmanager
    def request(self, ref: str) -> Iterator[sqlite3.Connection]:
        """The connection of one request, counted in flight for ``ref`` and for all."""
        conn = connect(self.db)
        try:
            for row in (ref, ALL):
                conn.execute("INSERT OR IGNORE INTO counters (sid) VALUES (?)", (row,))
            # In an UPDATE, the right-hand side sees the old row: max(old max, old + 1).
            conn.execute(
                "UPDATE counters SET inflight = inflight + 1, requests = requests + 1,"
                " max_inflight = MAX(max_inflight, inflight + 1) WHERE sid IN (?, ?)",
                (ref, ALL),
            )
            try:
                yield conn
            finally:
                conn.execute(
                    "UPDATE counters SET inflight = inflight - 1 WHERE sid IN (?, ?)", (ref, ALL)
                )
        finally:
            conn.close()

    @staticmethod
    def read(conn: sqlite3.Connection, ref: str) -> int:
        return int(conn.execute("SELECT count FROM counters WHERE sid = ?", (ref,)).fetchone()[0])

    @staticmethod
    def write(conn: sqlite3.Connection, ref: str, count: int) -> None:
        conn.execute("UPDATE counters SET count = ? WHERE sid = ?", (count, ref))

    @staticmethod
    def arrive(conn: sqlite3.Connection, room: str) -> None:
        conn.execute("INSERT OR IGNORE INTO rooms (room) VALUES (?)", (room,))
        conn.execute("UPDATE rooms SET arrived = arrived + 1 WHERE room = ?", (room,))

    @staticmethod
    def arrived(conn: sqlite3.Connection, room: str) -> int:
        row = conn.execute("SELECT arrived FROM rooms WHERE room = ?", (room,)).fetchone()
        return int(row[0]) if row else 0

    def stats(self, ref: str) -> dict[str, int]:
        conn = connect(self.db)
        try:
            rows = dict(
                (sid, (count, max_inflight, requests))
                for sid, count, max_inflight, requests in conn.execute(
                    "SELECT sid, count, max_inflight, requests FROM counters WHERE sid IN (?, ?)",
                    (ref, ALL),
                )
            )
        finally:
            conn.close()
        count, max_inflight, requests = rows.get(ref, (0, 0, 0))
        return {
            "count": count,
            "max_inflight": max_inflight,
            "requests": requests,
            "max_inflight_all": rows.get(ALL, (0, 0, 0))[1],
        }


def _sid(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    try:
        jar: SimpleCookie = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def _query(raw: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(raw).items()}


# -- WSGI ----------------------------------------------------------------------------------


def make_wsgi_counter(*, db: str | Path, work: float = 0.02) -> Callable[..., Iterable[bytes]]:
    """The bare WSGI counter app (no middleware)."""
    store = Store(db)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sid = _sid(environ.get("HTTP_COOKIE"))
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        query = _query(environ.get("QUERY_STRING", ""))
        if sid is None:
            return _wsgi_reply(start_response, "400 Bad Request", {"error": "no sid cookie"})
        ref = session_ref(sid)
        if method == "POST" and path == "/incr":
            with store.request(ref) as conn:
                count = store.read(conn, ref)
                time.sleep(work)  # the app's work, between its read and its write
                store.write(conn, ref, count + 1)
            return _wsgi_reply(start_response, "200 OK", {"count": count + 1})
        if method == "GET" and path == "/stats":
            return _wsgi_reply(start_response, "200 OK", store.stats(ref))
        if method == "GET" and path == "/meet":
            room, wanted = query.get("room", ""), int(query.get("n", "2"))
            deadline = time.monotonic() + float(query.get("timeout", "10"))
            with store.request(ref) as conn:
                store.arrive(conn, room)
                while not (met := store.arrived(conn, room) >= wanted):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)  # the app waits for its peers: that is its job here
            return _wsgi_reply(start_response, "200 OK", {"met": met})
        return _wsgi_reply(start_response, "404 Not Found", {"error": "not found"})

    return app


def _wsgi_reply(start_response: Callable[..., Any], status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


# -- ASGI ----------------------------------------------------------------------------------

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def make_asgi_counter(*, db: str | Path, work: float = 0.02) -> ASGIApp:
    """The bare ASGI counter app (no middleware); it awaits during its work."""
    store = Store(db)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = dict(scope["headers"])
        sid = _sid(headers.get(b"cookie", b"").decode("latin-1"))
        method, path = scope["method"], scope["path"]
        query = _query(scope.get("query_string", b"").decode("latin-1"))
        if sid is None:
            await _asgi_reply(send, 400, {"error": "no sid cookie"})
            return
        ref = session_ref(sid)
        if method == "POST" and path == "/incr":
            with store.request(ref) as conn:
                count = store.read(conn, ref)
                await asyncio.sleep(work)  # the app's work, between its read and its write
                store.write(conn, ref, count + 1)
            await _asgi_reply(send, 200, {"count": count + 1})
        elif method == "GET" and path == "/stats":
            await _asgi_reply(send, 200, store.stats(ref))
        elif method == "GET" and path == "/meet":
            room, wanted = query.get("room", ""), int(query.get("n", "2"))
            deadline = time.monotonic() + float(query.get("timeout", "10"))
            with store.request(ref) as conn:
                store.arrive(conn, room)
                while not (met := store.arrived(conn, room) >= wanted):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.005)  # the app waits for its peers
            await _asgi_reply(send, 200, {"met": met})
        else:
            await _asgi_reply(send, 404, {"error": "not found"})

    return app


async def _asgi_reply(send: Callable[[Any], Awaitable[None]], status: int, body: object) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# -- configured by the environment -----------------------------------------------------------


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"key": os.environ.get("SESSIONLOCK_TEST_KEY", "cookie:sid")}
    # Bursts of one session that must all wait their turn, not fairness (test_fairness.py):
    # the waiting policy from before max_waiting_threads.
    options["max_waiting_threads"] = 64
    backend = os.environ.get("SESSIONLOCK_TEST_BACKEND")
    if backend:
        options["backend"] = backend
    return options


def _settings() -> tuple[str, bool, float]:
    db = os.environ["SESSIONLOCK_TEST_DB"]
    wrap = os.environ.get("SESSIONLOCK_TEST_WRAP", "1") != "0"
    work = float(os.environ.get("SESSIONLOCK_TEST_WORK", "0.02"))
    return db, wrap, work


def wsgi_from_env() -> Callable[..., Iterable[bytes]]:
    """The WSGI counter, wrapped or not as the environment says."""
    from sessionlock.wsgi import SessionLockMiddleware

    db, wrap, work = _settings()
    app = make_wsgi_counter(db=db, work=work)
    return SessionLockMiddleware(app, **_options()) if wrap else app


def asgi_from_env() -> ASGIApp:
    """The ASGI counter, wrapped or not as the environment says (``uvicorn --factory``)."""
    from sessionlock.asgi import SessionLockMiddleware

    db, wrap, work = _settings()
    app = make_asgi_counter(db=db, work=work)
    return SessionLockMiddleware(app, **_options()) if wrap else app


def __getattr__(name: str) -> Any:
    """``tests.e2e.apps:wsgi_app`` / ``:asgi_app``: built from the environment when imported."""
    if name == "wsgi_app":
        return _cached(name, wsgi_from_env)
    if name == "asgi_app":
        return _cached(name, asgi_from_env)
    raise AttributeError(name)


def _cached(name: str, factory: Callable[[], Any]) -> Any:
    app = globals().get("_built_" + name)
    if app is None:
        app = globals()["_built_" + name] = factory()
    return app
