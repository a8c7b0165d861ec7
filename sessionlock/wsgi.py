"""WSGI middleware: one session's requests run one at a time, in arrival order.

    from sessionlock.wsgi import SessionLockMiddleware

    app.wsgi_app = SessionLockMiddleware(app.wsgi_app)             # Flask
    application = SessionLockMiddleware(get_wsgi_application())     # Django

Put it *outside* the session layer: the lock is taken before the app loads the session and
released when the app calls ``start_response``, which every session layer does only after
saving (Flask in ``process_response``, Django's ``SessionMiddleware``, Beaker in its own
``start_response``). The body, ``close()`` and whatever runs after run outside the lock, so
a client that never closes its response (Werkzeug's test client) holds nothing. With
``release="end"`` the lock is held until the server closes the response. Requests of
different sessions never wait for each other. A request that waits past ``timeout`` gets a
503, one beyond ``max_waiters`` a 429, each with ``Retry-After``. Options: see
:class:`sessionlock.core.Core`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from .core import REFUSED, Core, Options
from .options import check_names
from .stale import FIELD, PEEK, token_in, wants_body

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

__all__ = ["SessionLockMiddleware"]


class SessionLockMiddleware:
    """Wraps a WSGI ``app``: one session's requests run one at a time, in arrival order.

    ``options``: see :class:`sessionlock.core.Core` (and :mod:`sessionlock.options` for their
    text forms). Unknown names raise ConfigurationError, naming the closest known one.
    """

    def __init__(self, app: WSGIApplication, **options: Unpack[Options]) -> None:
        check_names(options, "SessionLockMiddleware")
        self.app = app
        self.core = Core(**options)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        admission = core.admit(environ)
        if admission is None:
            return self.app(environ, start_response)
        try:
            core.enter(admission)
        except REFUSED as error:
            refusal = core.refuse(admission, error)
            start_response(refusal.status_line, list(refusal.headers))
            return [refusal.body]

        # A closure over three names, and no partial beside it: the cheapest per-request
        # callable that knows both the request and the server's start_response.
        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if admission.shared:
                headers = core.withhold(admission, environ, headers)
            headers = core.finish(admission, headers)
            try:
                return start_response(status, headers, exc_info)
            finally:
                if core.release_at_head:  # the session is saved: the next request may load it
                    core.leave(admission)

        try:
            core.prepare(admission, environ)  # under the lease: a failure here releases too
            revisions = core.revisions
            if revisions is not None and environ.get("REQUEST_METHOD") in revisions.pages.methods:
                answer = core.judge(admission, environ, _token(environ))
                if answer is not None:  # a stale page's request: the app never sees it
                    start_response(answer.status_line, [*answer.headers, admission.timing()])
                    core.leave(admission)
                    return [answer.body]
            result = self.app(environ, start_with_headers)
        except BaseException:
            core.leave(admission)
            raise
        if admission.lease is None:  # released at the head already: nothing left to hold
            return result
        # release="end", or an app that starts its response lazily (a generator)
        return _release_on_close(result, environ, partial(core.leave, admission))


def _release_on_close(
    result: Iterable[bytes], environ: WSGIEnvironment, release: Callable[[], None]
) -> Iterable[bytes]:
    """The response, made to release the session when the server closes it.

    A ``wsgi.file_wrapper`` is handed back as itself, its ``close`` chained, because servers
    only use sendfile when the iterable *is* their file wrapper (gunicorn, waitress).
    """
    wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(wrapper, type) and isinstance(result, wrapper):
        try:
            result.close = _Closer(getattr(result, "close", None), release)  # type: ignore[attr-defined]
        except AttributeError:  # a wrapper with __slots__: wrap it like any iterable
            pass
        else:
            return result
    return _ClosingIterable(result, release)


class _Closer:
    """Calls the app's ``close`` and then releases, once, whatever ``close`` raises."""

    __slots__ = ("_close", "_release")

    def __init__(self, close: Callable[[], Any] | None, release: Callable[[], None]) -> None:
        self._close = close
        self._release: Callable[[], None] | None = release

    def __call__(self) -> None:
        try:
            if self._close is not None:
                self._close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class _ClosingIterable:
    __slots__ = ("_iterable", "close")

    def __init__(self, iterable: Iterable[bytes], release: Callable[[], None]) -> None:
        self._iterable = iterable
        self.close = _Closer(getattr(iterable, "close", None), release)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)


def _token(environ: WSGIEnvironment) -> str | None:
    """A stale-page token the request carries: header, query, or the start of a form body
    (then put back, as the app reads it, in front of the rest)."""
    content_type = str(environ.get("CONTENT_TYPE", ""))
    header = environ.get("HTTP_SESSION_REVISION")
    query = str(environ.get("QUERY_STRING", ""))
    body = None
    if header is None and FIELD not in query and wants_body(content_type):
        body = _peek(environ)
    return token_in(header, query, content_type, body)


def _peek(environ: WSGIEnvironment) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None  # the app's framework answers a malformed length
    stream = environ.get("wsgi.input")
    if length <= 0 or stream is None:
        return None  # no length (chunked): not read ahead, the token goes in the query then
    head: bytes = stream.read(min(length, PEEK))
    if len(head) >= length:
        environ["wsgi.input"] = io.BytesIO(head)
    else:
        environ["wsgi.input"] = io.BufferedReader(_Replay(head, stream, length - len(head)))
    return head


class _Replay(io.RawIOBase):
    """The bytes read ahead, then the server's stream: never more than the body's length
    from it (``wsgiref`` hands over the socket itself, where reading further would block)."""

    def __init__(self, head: bytes, rest: Any, remaining: int) -> None:
        self._head = memoryview(head)
        self._rest = rest
        self._remaining = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        if self._remaining <= 0:
            return 0
        data = self._rest.read(min(len(buffer), self._remaining))
        self._remaining -= len(data)
        buffer[: len(data)] = data
        return len(data)
