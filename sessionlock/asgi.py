"""ASGI middleware: one session's requests run one at a time, in arrival order.

    from starlette.applications import Starlette
    from starlette.middleware.sessions import SessionMiddleware
    from sessionlock.asgi import SessionLockMiddleware

    app = Starlette(routes=...)
    app.add_middleware(SessionMiddleware, secret_key="...")
    app.add_middleware(SessionLockMiddleware)   # added last = outermost: outside the session

The lock is taken before the app runs (so before any session layer inside it loads) and
released when ``http.response.start`` passes through it, which session layers send only
after saving (Starlette's ``SessionMiddleware`` and starsessions write there). The body,
streaming and background tasks run outside the lock, so the user's next page does not wait
for them. With ``release="end"`` it is held until the app returns. A waiting request never
blocks the event loop, and leaves the queue if its client disconnects. Websocket and
lifespan scopes pass through untouched. Options: see :class:`sessionlock.core.Core`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ._types import ASGIApp, Message, Receive, Scope, Send
from .core import REFUSED, Admission, Core, Options
from .errors import ClientGone
from .options import check_names
from .stale import FIELD, PEEK, token_in, wants_body

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SessionLockMiddleware"]

_T = TypeVar("_T")
_NO_WAIT = (b"server-timing", b'sessionlock;dur=0.0;desc="session lock wait"')
_MAX_KEPT = 64 * 1024  # body bytes a waiting request reads ahead, at most
_READ = frozenset({b"set-cookie", b"cache-control"})  # the response headers Core.finish reads


class SessionLockMiddleware:
    """Wraps an ASGI ``app``: one session's HTTP requests run one at a time, in arrival order.

    ``options``: see :class:`sessionlock.core.Core` (and :mod:`sessionlock.options` for their
    text forms). Unknown names raise ConfigurationError, naming the closest known one.
    """

    def __init__(self, app: ASGIApp, **options: Unpack[Options]) -> None:
        check_names(options, "SessionLockMiddleware")
        self.app = app
        self._options = options
        self._building: asyncio.Future[Core] | None = None
        # Starlette builds its middleware stack lazily, on the event loop: the backend (a
        # directory opened, swept) is then built in a thread at the first request instead.
        self._core: Core | None = None if _on_event_loop() else Core(**options)

    @property
    def core(self) -> Core:
        """The shared decisions (queue, backend, options); built now if not yet."""
        if self._core is None:
            self._core = Core(**self._options)
        return self._core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        core = self._core if self._core is not None else await self._build()
        if not isinstance(scope.get("headers"), list):
            # ASGI promises only an iterable (Falcon's test client passes an iterator of
            # iterators): read once into a list, so neither we nor the app consume it.
            scope["headers"] = [(name, value) for name, value in scope.get("headers", ())]
        admission = core.admit(scope)
        if admission is None:
            await self.app(scope, receive, send)
            return
        inbox = None
        try:
            if not core.try_enter(admission):
                inbox = _Inbox(receive)
                await core.enter_async(admission, inbox.until_disconnect)
        except ClientGone:
            return  # nobody is left to answer
        except REFUSED as error:
            refusal = core.refuse(admission, error)
            start = {"status": refusal.status, "headers": _encode(refusal.headers)}
            await send({"type": "http.response.start", **start})
            await send({"type": "http.response.body", "body": refusal.body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))  # our copy, completed in place
                if admission.shared:
                    headers = core.withhold(admission, scope, headers)
                if (core.revisions_block and core.revises(admission, headers)) or (
                    core.cookies_block
                    and not core.records_inline(admission)  # first: no header scan if inline
                    and core.stores(admission, headers)
                ):  # a record to write away from a held descriptor: in a worker thread
                    message["headers"] = await _off_loop(_finish, core, admission, headers)
                else:
                    message["headers"] = _finish(core, admission, headers)
                if core.release_at_head:  # the session is saved: the next request may load it
                    if core.releases_inline:
                        core.leave(admission)
                    else:
                        await core.leave_async(admission)
            await send(message)

        try:
            # under the lease: a failure here releases too
            if core.revisions_block or (
                core.cookies_block and core.loads(admission, scope)
            ):  # a record or a revision to read: off the loop
                await _off_loop(core.prepare, admission, scope)
            else:
                core.prepare(admission, scope)
            if not core.releases_inline:  # an early release must reach this loop
                admission.loop = asyncio.get_running_loop()
            if inbox is not None and inbox.kept:
                receive = inbox.receive
            revisions = core.revisions
            if revisions is not None and scope.get("method") in revisions.pages.methods:
                token, receive = await _token(scope, receive)
                answer = core.judge(admission, scope, token)
                if answer is not None:  # a stale page's request: the app never sees it
                    headers = [*answer.headers, admission.timing()]
                    start = {"status": answer.status, "headers": _encode(headers)}
                    await send({"type": "http.response.start", **start})
                    await _leave(core, admission)
                    await send({"type": "http.response.body", "body": answer.body})
                    return
            await self.app(scope, receive, send_with_headers)
        finally:
            if admission.lease is not None:  # the backstop: no response, an error, "end"
                await _leave(core, admission)

    async def _build(self) -> Core:
        if self._building is None:
            self._building = asyncio.ensure_future(asyncio.to_thread(Core, **self._options))
        built = await asyncio.shield(self._building)
        if self._core is None:  # else `core` was read meanwhile: keep that one
            self._core = built
        return self._core


async def _off_loop(function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a worker thread, so its file I/O never blocks the loop.

    Under another event loop library (trio, through anyio) it runs inline: sessionlock waits
    with asyncio primitives, so it serves trio apps only while uncontended anyway.
    """
    if not _on_event_loop():
        return function(*args)
    return await asyncio.to_thread(function, *args)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _leave(core: Core, admission: Admission) -> None:
    if core.releases_inline:
        core.leave(admission)
    else:
        await core.leave_async(admission)


class _Inbox:
    """Reads the client's messages while the request waits, to see a disconnect at once.

    Whatever was read (request body chunks) is kept and handed to the app first. At most
    ``_MAX_KEPT`` bytes of body are read ahead: then reading stops, and the server's flow
    control holds the rest of an upload back (a disconnect after that point is seen when the
    turn comes, by the app's own ``receive``).
    """

    __slots__ = ("_receive", "kept")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.kept: deque[Message] = deque()

    async def until_disconnect(self) -> None:
        size = 0
        while True:
            message = await self._receive()
            self.kept.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size >= _MAX_KEPT and message.get("more_body", False):
                await asyncio.get_running_loop().create_future()  # until the turn comes

    async def receive(self) -> Message:
        if self.kept:
            return self.kept.popleft()
        return await self._receive()


def _finish(
    core: Core, admission: Admission, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The response's final headers; ``headers`` is the shell's own copy (extended in place)."""
    if core.revisions is None and not core.sets_cookies(admission, headers):  # no decoding
        if admission.waited < 0.00005:  # no wait: the preformatted, pre-encoded header
            headers.append(_NO_WAIT)
        else:
            headers.extend(_encode([admission.timing()]))
        return headers
    # Core.finish reads only these, and only appends: the rest is neither decoded nor encoded.
    read = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers if n.lower() in _READ]
    headers.extend(_encode(core.finish(admission, read)[len(read) :]))
    return headers


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    # ASGI header names are lower case (servers and Falcon's test client check it).
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def _token(scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
    """A stale-page token the request carries: header, query, or the start of a form body;
    and the ``receive`` that hands the app every body message, those read ahead first."""
    header = content_type = None
    for name, value in scope.get("headers", ()):
        if name == b"session-revision":
            header = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    if header is not None or FIELD in query or not wants_body(content_type or ""):
        return token_in(header, query, content_type or "", None), receive
    kept: deque[Message] = deque()
    body = bytearray()
    while len(body) < PEEK:
        message = await receive()
        kept.append(message)
        if message["type"] != "http.request":
            break  # a disconnect: the app sees it too
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break

    async def replay() -> Message:
        if kept:
            return kept.popleft()
        return await receive()

    return token_in(None, query, content_type or "", bytes(body[:PEEK])), replay
