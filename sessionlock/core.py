"""The one core under the WSGI and ASGI shells: options, admission, waiting, refusals.

The shells differ only in how they wait (a thread blocks; a task awaits and watches for the
client leaving) and in how they talk to the app. Everything else is decided here once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from http import HTTPStatus
from typing import Literal, Protocol, TypedDict, TypeVar

from . import keys
from . import metrics as _metrics
from ._types import Request
from .backends import DEFAULT_URL, Backend, Lease, from_url
from .errors import BackendUnavailable, ClientGone, ConfigurationError, LockTimeout, QueueFull
from .fairness import server_threads, waiting_threads_for
from .metrics import Metrics
from .order import check as check_order
from .queue import KeyedQueue, TaskWaiter
from .setup_checks import SetupChecks
from .stale import Revisions, StalePages

__all__ = ["HANDLE", "HELD", "SHARED", "Admission", "Core", "Options", "Refusal"]

logger = logging.getLogger("sessionlock")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})


_Headers = TypeVar("_Headers", list[tuple[bytes, bytes]], list[tuple[str, str]])


class Options(TypedDict, total=False):
    """The keyword options both middleware classes take (see :class:`Core`)."""

    backend: str | Backend
    key: str | keys.KeySource
    timeout: float | None
    max_waiters: int
    max_waiting_threads: int | None
    exempt: Collection[str] | Callable[[Request], bool] | None
    secret: str | bytes | None
    cookie_session: str | Sequence[str] | None
    release: Literal["head", "end"]
    on_backend_error: Literal["closed", "open"]
    stale_pages: StalePages | str | None
    shared: Collection[str] | Callable[[Request], bool] | None
    metrics: Metrics | str | None


#: Where the request's :class:`Admission` is, as its handle (early release, rotation).
HANDLE = "sessionlock.handle"
#: The (backend, key) pairs that layers outside this one hold for the request.
HELD = "sessionlock.held"
#: True in the environ/scope of a request that holds its session shared (``shared``).
SHARED = "sessionlock.shared"
_ROTATE_NOTE = "rotate"
_WAIT_DESC = 'desc="session lock wait"'
_NO_WAIT = ("Server-Timing", f"sessionlock;dur=0.0;{_WAIT_DESC}")


class Admission:
    """One request's state: its hashed key, and what to add to its response.

    It is also the request's *handle*, under ``environ["sessionlock.handle"]`` (or the
    scope's): what a handler may ask of the layer holding its session, through
    :func:`sessionlock.release_session` and :func:`sessionlock.rotate_identity`. Its repr
    shows nothing: debug pages (Django's, Werkzeug's) print the environ.
    """

    __slots__ = (
        "_core",
        "generation",
        "identity",
        "key",
        "lease",
        "loop",
        "notes",
        "secure",
        "set_identity",
        "shared",
        "started",
        "waited",
    )

    def __init__(
        self, key: str, set_identity: str | None, secure: bool = False, core: Core | None = None
    ) -> None:
        self._core = core
        #: The event loop of an ASGI request whose backend releases asynchronously.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.key = key
        self.set_identity = set_identity
        self.secure = secure  # the identity cookie's https form (__Host-, Secure)
        self.started = time.perf_counter()
        self.waited = 0.0
        self.lease: Lease | None = None
        #: Per-request state of optional features (cookie tracking), keyed by feature.
        self.notes: dict[str, object] | None = None
        #: With the identity key: the raw identity and the jar generation the request carries
        #: (read once at admission, for cookie tracking). Never logged: a credential.
        self.identity: str | None = None
        self.generation = 0
        #: Whether it holds its session shared, with other readers (the ``shared`` option).
        self.shared = False

    def release(self) -> None:
        """Let the session's next request run now; idempotent, from any thread."""
        core = self._core
        if core is None:
            return
        if self.loop is None:
            core.leave(self)
        else:  # a backend that releases over the network: on the request's loop
            asyncio.run_coroutine_threadsafe(core.leave_async(self), self.loop)

    def rotate(self) -> bool:
        """Give the browser a new identity with this response (False: too late, or none)."""
        return self._core is not None and self._core._rotate(self)

    def __repr__(self) -> str:
        return "<sessionlock request handle>"

    def response_headers(self, *, cookies: bool = True) -> list[tuple[str, str]]:
        """Server-Timing, and the identity Set-Cookie unless ``cookies`` is False."""
        headers = [self.timing()]
        if cookies and self.set_identity is not None:
            headers.append(("Set-Cookie", self.set_identity))
        return headers

    def timing(self) -> tuple[str, str]:
        """The Server-Timing header: how long the request waited for its session."""
        if self.waited < 0.00005:  # rounds to 0.0 ms: the uncontended case, preformatted
            return _NO_WAIT
        return ("Server-Timing", f"sessionlock;dur={self.waited * 1000:.1f};{_WAIT_DESC}")


#: The cookie tracked by default (``cookie_session``): the name of Flask's, Starlette's (so
#: FastAPI's), Quart's and Pyramid's default signed-cookie session. A session kept on the
#: server under that name (Flask-Session) costs a comparison per response that sets it.
DEFAULT_COOKIE_SESSION: tuple[str, ...] = ("session",)


class CookieTracker(Protocol):
    """Keeps a cookie session's latest value across serialized requests (see cookies.py)."""

    def needs_read(self, admission: Admission, request: Request) -> bool:
        """Under the lease, before :meth:`prepare`: whether it will read the store (no I/O)."""

    def prepare(self, admission: Admission, request: Request) -> None:
        """Under the lease, before the app runs: hand the app the latest session cookie."""

    def settle(self, admission: Admission) -> bool:
        """As the response starts, if it sets no tracked cookie: True (and the request's
        state dropped) if :meth:`finish` would add nothing, the browser being current."""

    def finish(
        self,
        admission: Admission,
        headers: list[tuple[str, str]],
        *,
        public: bool = False,
    ) -> list[tuple[str, str]]:
        """Under the lease, as the response starts: record and complete its Set-Cookie.

        ``public``: a shared cache may store the response: add no Set-Cookie to it.
        """


class _Unshared(Lease):
    """The lease of a brand-new identity: no other request can carry it before this
    response's head goes out, so it is held without the local queue or the backend.

    Only with ``release="head"``, which precedes the browser learning the identity;
    ``release="end"`` holds on past that point, so it takes the ordinary lock.
    """

    __slots__ = ()


class _Degraded(Lease):
    """The lease of a request let in while the backend fails (``on_backend_error="open"``):
    it holds this process's turn only, and nothing in the backend; cookie records are neither
    read nor written under it (the request sees its cookies as sent)."""

    __slots__ = ()


class Refusal:
    """The answer to a request the app does not see: 429 or 503 (it could not get its
    turn, Retry-After), or 409 or 303 (it came from a stale page)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: str, headers: Sequence[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.body = body.encode()
        self.headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(self.body))),
            *(headers if headers is not None else [("Retry-After", "1")]),
            ("Cache-Control", "no-store"),
        ]

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"


_QUEUE_FULL = Refusal(429, "Too many requests of this session are waiting; retry shortly.\n")
_TIMED_OUT = Refusal(503, "Another request of this session is still running; retry shortly.\n")
_UNAVAILABLE = Refusal(503, "The session lock service is unavailable; retry shortly.\n")


class Core:
    """Configuration and per-request decisions, shared by both middleware classes.

    backend:     ``"memory://"``, ``"file:///dir"`` or a Backend object.
    key:         a key source or spec (see :mod:`sessionlock.keys`); default ``identity``.
    timeout:     seconds a request may wait for its turn before a 503 (None: forever). The
                 default, 25 s, answers before gunicorn's 30 s worker timeout kills a waiter.
    max_waiters: requests of one session allowed to wait at once; beyond, 429 at once.
    max_waiting_threads: server threads of this process allowed to wait for their session at
                 once (WSGI); beyond, 429 at once, so waiting requests never take the
                 threads other sessions need. None (default): derived from the server's
                 threads T as ``(T - 1) // 2`` (:mod:`sessionlock.fairness`; 0 for one
                 thread per process: gunicorn sync) where sessionlock can tell T
                 (:mod:`sessionlock.gunicorn`, waitress); otherwise no cap. ASGI tasks
                 cost no thread: they are bounded by ``max_waiters`` only.
    exempt:      path prefixes ("/static/"), methods ("GET"), or a predicate of the
                 environ/scope; exempt requests run at once, unserialized.
    secret:      key for hashing session keys (16+ bytes); default: the backend's.
    cookie_session: the name(s) of a signed-cookie session's cookie: each request gets the
                 latest one issued to its browser (see :mod:`sessionlock.cookies`). Default
                 ``"session"``: Flask's, Starlette's (FastAPI's), Quart's and Pyramid's
                 default session cookie, so their default sessions lose no update without
                 any option. None: no tracking. Needs the identity key (with another key
                 the default tracks nothing).
    release:     ``"head"`` (default): the session is released as soon as the response's
                 status and headers go out, when every framework has saved its session;
                 body streaming, ``close()`` and background tasks run outside the lock.
                 ``"end"``: held until the response is complete, for apps that write
                 server-side session state while streaming.
    on_backend_error: ``"closed"`` (default): a request whose backend fails (Redis down, a
                 full disk) is answered 503 with Retry-After. ``"open"``: it runs anyway,
                 serialized with this process's other requests of its session only (across
                 processes or hosts two may overlap); a warning is logged once per outage, and
                 another once the backend answers again. Each request still asks the backend
                 first, so the first one after it is back is serialized everywhere again.
    stale_pages: a :class:`sessionlock.stale.StalePages` (or its policy as text: ``"refuse"``,
                 ``"flag"``, ``"redirect:<url>"``): keep a revision per session and catch
                 forms sent from pages older than it (the back button, an old tab). None
                 (default): no revision is kept.
    shared:      requests that only read their session (methods such as ``"GET"``, path
                 prefixes, or a predicate of the environ/scope, as ``exempt``): they hold
                 the session *shared*, side by side with each other, while any other request
                 holds it alone; the line stays first come, first served. A shared request
                 that sets a tracked session cookie has it removed from its response (it
                 would undo what a writer saved meanwhile) and is reported. None (default):
                 every request is exclusive.
    metrics:     a :class:`sessionlock.metrics.Metrics` told of waits, refusals, lost leases,
                 stale requests and rule findings, or ``"prometheus"``: the process's
                 :class:`sessionlock.prometheus.PrometheusMetrics`. None (default): none.
    """

    def __init__(
        self,
        *,
        backend: str | Backend = DEFAULT_URL,
        key: str | keys.KeySource = "identity",
        timeout: float | None = 25.0,
        max_waiters: int = 16,
        max_waiting_threads: int | None = None,
        exempt: Collection[str] | Callable[[Request], bool] | None = None,
        secret: str | bytes | None = None,
        cookie_session: str | Sequence[str] | None = DEFAULT_COOKIE_SESSION,
        release: Literal["head", "end"] = "head",
        on_backend_error: Literal["closed", "open"] = "closed",
        stale_pages: StalePages | str | None = None,
        shared: Collection[str] | Callable[[Request], bool] | None = None,
        metrics: Metrics | str | None = None,
    ) -> None:
        if timeout is not None and (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 < timeout < float("inf")  # inf would overflow the lock primitive
        ):
            raise ConfigurationError(
                f"timeout must be a finite number of seconds > 0, or None (wait forever), "
                f"got {timeout!r}"
            )
        if not isinstance(max_waiters, int) or isinstance(max_waiters, bool) or max_waiters < 0:
            raise ConfigurationError(f"max_waiters must be an int >= 0, got {max_waiters!r}")
        if max_waiting_threads is not None and (
            not isinstance(max_waiting_threads, int)
            or isinstance(max_waiting_threads, bool)
            or max_waiting_threads < 0
        ):
            raise ConfigurationError(
                f"max_waiting_threads must be an int >= 0, or None (derived from the server),"
                f" got {max_waiting_threads!r}"
            )
        if release not in ("head", "end"):
            raise ConfigurationError(f"release must be 'head' or 'end', got {release!r}")
        if on_backend_error not in ("closed", "open"):
            raise ConfigurationError(
                f"on_backend_error must be 'closed' or 'open', got {on_backend_error!r}"
            )
        self.fail_open = on_backend_error == "open"
        # Whether the backend is failing now, as last seen: said once when an outage begins
        # and once when it ends, never per request.
        self._outage = False
        self._outage_lock = threading.Lock()
        if isinstance(backend, str):
            backend = from_url(backend)
        elif not isinstance(backend, Backend):
            raise ConfigurationError(f"backend must be a URL or a Backend, got {backend!r}")
        self.backend = backend
        self.key_source = keys.from_spec(key)
        self.timeout = timeout
        self.max_waiters = max_waiters
        # The cap on waiting threads: the option, else derived at the first enter().
        self.max_waiting_threads = max_waiting_threads
        self._threads_derived = max_waiting_threads is not None
        self.is_exempt = _exemption(exempt)
        self.is_shared = _exemption(shared, "shared")
        self.release_at_head = release == "head"
        # Marks this layer's hold in the request, so a nested layer on the same backend and
        # key passes through instead of waiting for itself.
        self._mark = id(backend)
        # Early release may come from another thread than the shell's own release.
        self._leaving = threading.Lock()
        self.secret = keys.derive_secret(secret) if secret is not None else backend.secret()
        if isinstance(self.key_source, keys.Identity):  # signed with the secret workers share
            self.key_source = self.key_source.bind(self.secret)
        # The identity cookie is ours: removed from the header the app sees.
        self._identity = self.key_source if isinstance(self.key_source, keys.Identity) else None
        self.queue = KeyedQueue()
        # Recent keys' digests: the hash is the largest fixed cost of an uncontended request.
        # In process memory only, where the raw keys already are; never written anywhere.
        self._digests: dict[str, str] = {}
        # Lease calls over a network (redis://, Backend.inline_leases False) never run on an
        # event loop: a task awaits acquire_future even when uncontended, and releases through
        # release_async. A local backend keeping the default release_async releases inline.
        self.enters_inline = backend.inline_leases
        self.releases_inline = (
            backend.inline_leases and type(backend).release_async is Backend.release_async
        )
        # Cookie records on a backend outside process memory cost file or network I/O: the
        # ASGI shell moves that off the event loop.
        if cookie_session is DEFAULT_COOKIE_SESSION and not isinstance(
            self.key_source, keys.Identity
        ):
            cookie_session = None  # a chosen key source: tracking only if asked for
        self.cookies_block = cookie_session is not None and backend.shared
        self._tracked: frozenset[bytes] = frozenset()
        self.cookies: CookieTracker | None = None
        if cookie_session is not None:
            from .cookies import SessionCookies

            self.cookies = SessionCookies(
                cookie_session, backend=backend, secret=self.secret, key=self.key_source
            )
            self._tracked = frozenset(name.encode() for name in self.cookies.names)
        if isinstance(stale_pages, str):  # "refuse", "flag", "redirect:<url>"
            stale_pages = StalePages.from_text(stale_pages)
        if stale_pages is not None and not isinstance(stale_pages, StalePages):
            raise ConfigurationError(
                "stale_pages must be a sessionlock.stale.StalePages, 'refuse', 'flag', "
                f"'redirect:<url>' or None, got {stale_pages!r}"
            )
        self.revisions: Revisions | None = None
        if stale_pages is not None:
            names = self.cookies.names if self.cookies is not None else ()
            self.revisions = Revisions(stale_pages, backend, names)
        # Revisions outside process memory cost I/O: the ASGI shell moves it off the loop.
        self.revisions_block = stale_pages is not None and backend.shared
        self.metrics = _metrics.from_option(metrics)
        if self.metrics is not None:
            _metrics.wire(self.metrics, stale_pages)
        chosen = None if isinstance(self.key_source, keys.Identity) else self._key_name()
        checks = SetupChecks(shared=backend.shared, key=chosen)
        self._checks: SetupChecks | None = None if checks.done else checks
        logger.info("sessionlock: %s", self.describe())

    def _key_name(self) -> str:
        return getattr(self.key_source, "__qualname__", None) or repr(self.key_source)

    def describe(self) -> str:
        """One line saying what this layer does: the start-up INFO line of the logger."""
        backend = self.backend
        directory = getattr(backend, "directory", None)
        if directory is not None:
            where = f"file://{directory} (shared by this host's processes)"
        elif not backend.shared:
            where = "memory:// (this process only)"
        else:
            where = type(backend).__name__
        key = self._key_name()
        names = getattr(self.cookies, "names", None)
        cookies = ", ".join(names) if names else "none"
        timeout = "none (wait forever)" if self.timeout is None else f"{self.timeout:g} s"
        threads = "derived" if not self._threads_derived else self.max_waiting_threads
        return (
            f"backend {where}; key {key}; tracked cookie sessions: {cookies}; timeout {timeout};"
            f" max_waiters {self.max_waiters}; max_waiting_threads {threads};"
            f" released at the {'head' if self.release_at_head else 'end'};"
            f" on backend error: {'open' if self.fail_open else 'closed'};"
            f" shared reads: {'configured' if self.is_shared is not None else 'none'};"
            f" stale pages: {self.revisions.pages if self.revisions is not None else 'off'};"
            f" metrics: {type(self.metrics).__name__ if self.metrics is not None else 'off'}"
        )

    # -- admission -----------------------------------------------------------------------

    def admit(self, request: Request) -> Admission | None:
        """The request's admission, or None when it passes through unserialized."""
        identity = self._identity
        set_identity, secure, generation = None, False, 0
        if identity is not None:  # read, and removed from what the app sees, in one pass
            raw, set_identity, secure, generation = identity.take(request)
        if self.is_exempt is not None and self.is_exempt(request):
            _debug("a request passes unserialized: exempt")
            return None
        if identity is None:
            found = self.key_source(request)
            checks = self._checks
            if checks is not None and not checks.done:
                checks.request(request, found is not None)
            if found is None:
                _debug("a request passes unserialized: no session key")
                return None
            raw = found
        elif self._checks is not None and not self._checks.done:
            self._checks.request(request, True)
        digest = self._digests.get(raw)
        if digest is None:
            digest = keys.hash_key(self.secret, raw)
            if len(raw) <= _CACHED_KEY:  # bounded memory: 4096 keys of at most 256 chars
                if len(self._digests) >= _DIGEST_CACHE:
                    self._digests.clear()
                self._digests[raw] = digest
        held = request.get(HELD)
        if held is not None and (self._mark, digest) in held:
            return None  # nested inside a layer holding this very session: already serialized
        if logger.isEnabledFor(logging.DEBUG):  # not _debug: no call, no slice when off
            logger.debug(
                "session %s: admitted (%s)", digest[:12], "new browser" if set_identity else "known"
            )
        admission = Admission(digest, set_identity, secure, self)
        if identity is not None:
            admission.identity, admission.generation = raw, generation
        if set_identity is None and self.is_shared is not None and self.is_shared(request):
            admission.shared = True  # a brand-new identity has no session to share
        if set_identity is not None and self.release_at_head:
            # A brand-new identity: held at once, without the queue or the backend (on
            # file://, a lock file made and removed for nothing). See _Unshared.
            admission.lease = _Unshared(digest)
        return admission

    # -- waiting: threads ----------------------------------------------------------------

    def enter(self, admission: Admission) -> None:
        """Block until the request holds its session (local turn, then backend lease).

        A thread waits only while fewer than ``max_waiting_threads`` of the process do
        (in line here or for the backend); otherwise QueueFull (429) at once.
        """
        if admission.lease is not None:  # a brand-new identity, held since admit()
            return
        key, shared = admission.key, admission.shared
        waited = not self.queue.try_acquire(key, shared=shared)
        if waited:  # held here: wait in line (or be refused)
            cap = self._waiting_threads()
            waiters = self.max_waiters if cap is None else min(self.max_waiters, cap)
            with _metrics.waiting(self.metrics):
                self.queue.acquire(
                    key, timeout=self.timeout, max_waiters=waiters, max_threads=cap, shared=shared
                )
        try:
            lease = self._try_backend(key, shared)
            if lease is None:  # held by another process: wait for the backend
                lease, waited = self._backend_acquire(admission), True
        except BackendUnavailable as error:
            if not self.fail_open:
                self.queue.release(key, shared=shared)
                raise
            lease = self._degraded(key, error)
        except BaseException:
            self.queue.release(key, shared=shared)
            raise
        else:
            if self._outage:
                self._backend_back()
        if waited:
            self._entered(admission, lease)
        else:
            admission.lease = lease  # no wait: Server-Timing says 0.0

    def _backend_acquire(self, admission: Admission) -> Lease:
        """Block for the backend's lease, counted as a waiting thread of the process."""
        cap = self._waiting_threads()
        if not self.queue.reserve_thread(cap):
            raise QueueFull(
                "the session is busy in another process, and this process's"
                f" {cap} waiting threads are taken"
            )
        try:
            remaining = self._remaining(admission)
            with _metrics.waiting(self.metrics):
                if admission.shared:
                    lease = self.backend.acquire(admission.key, remaining, shared=True)
                else:  # without the keyword: a Backend of before shared leases still works
                    lease = self.backend.acquire(admission.key, remaining)
        finally:
            self.queue.unreserve_thread()
        if lease is None:
            raise LockTimeout(f"waited more than {self.timeout} s for the session lock")
        return lease

    def _waiting_threads(self) -> int | None:
        if not self._threads_derived:  # once: what the server tells (waitress), else no cap
            threads = server_threads()
            self.max_waiting_threads = None if threads is None else waiting_threads_for(threads)
            self._threads_derived = True
        return self.max_waiting_threads

    def leave(self, admission: Admission) -> None:
        """Release the lease and hand the turn to the next request of the session.

        Idempotent and thread-safe: the response head, an early release, the app's return
        and ``close()`` may each call it; the first one releases.
        """
        lease = self._take(admission)
        if lease is not None:
            self._give_back(lease, admission.shared)
            if self.metrics is not None:
                _metrics.released(self.metrics, lease)
            if logger.isEnabledFor(logging.DEBUG):  # as in admit: every request passes here
                logger.debug("session %s: released", lease.key[:12])

    # -- waiting: tasks ------------------------------------------------------------------

    def try_enter(self, admission: Admission) -> bool:
        """Take the session at once if nobody holds it; never wait (the ASGI fast path)."""
        if admission.lease is not None:  # a brand-new identity, held since admit()
            return True
        if not self.enters_inline:  # a backend over the network: never asked on the loop
            return False
        key, shared = admission.key, admission.shared
        if not self.queue.try_acquire(key, shared=shared):
            return False
        try:
            lease = self._try_backend(key, shared)
        except BackendUnavailable:  # the turn must not stay taken: the long way decides
            self.queue.release(key, shared=shared)
            if self.fail_open:
                return False
            raise
        except BaseException:
            self.queue.release(key, shared=shared)
            raise
        if lease is None:  # another process holds it: wait the long way
            self.queue.release(key, shared=shared)
            return False
        if self._outage:
            self._backend_back()
        admission.lease = lease  # no wait: Server-Timing says 0.0
        return True

    async def enter_async(
        self, admission: Admission, until_gone: Callable[[], Awaitable[object]]
    ) -> None:
        """:meth:`enter` for a task; ``until_gone`` returns when the client disconnects.

        ``until_gone`` runs (once, as a task) only while the request actually waits, so an
        uncontended request costs no extra task.
        """
        if admission.lease is not None:  # a brand-new identity, held since admit()
            return
        key, shared = admission.key, admission.shared
        gone: asyncio.Future[object] | None = None
        waiter = self.queue.join(key, max_waiters=self.max_waiters, shared=shared)
        try:
            if waiter is not None:
                gone = asyncio.ensure_future(until_gone())
                gone.add_done_callback(lambda done: self._client_gone(done, waiter))
                with _metrics.waiting(self.metrics):
                    await self.queue.wait(waiter, self.timeout)
            try:
                # A backend over the network is not asked on the loop: its future answers,
                # at once when the key is free (a round trip on a helper thread).
                lease = self._try_backend(key, shared) if self.enters_inline else None
                if lease is None:
                    if gone is None:
                        gone = asyncio.ensure_future(until_gone())
                    with _metrics.waiting(self.metrics):
                        lease = await self._backend_wait(admission, gone)
            except BackendUnavailable as error:
                if not self.fail_open:
                    self.queue.release(key, shared=shared)
                    raise
                lease = self._degraded(key, error)
            except BaseException:
                self.queue.release(key, shared=shared)
                raise
            else:
                if self._outage:
                    self._backend_back()
        finally:
            if gone is not None:
                gone.cancel()
        self._entered(admission, lease)

    def _client_gone(self, watcher: asyncio.Future[object], waiter: TaskWaiter) -> None:
        # A watcher cancelled because the turn came is no news; one that returned (or whose
        # receive failed) means the client is gone: leave the line.
        if not watcher.cancelled():
            watcher.exception()  # retrieved, so asyncio does not log it as lost
            self.queue.abandon(waiter, ClientGone())

    async def _backend_wait(self, admission: Admission, gone: asyncio.Future[object]) -> Lease:
        # The backend's future is awaited directly and the client's leaving cancels it: no
        # task or asyncio.wait around it, whose extra loop steps delay every hand-off.
        remaining = self._remaining(admission)
        if admission.shared:
            acquiring = self.backend.acquire_future(admission.key, remaining, shared=True)
        else:
            acquiring = self.backend.acquire_future(admission.key, remaining)
        left = False

        def client_left(watcher: asyncio.Future[object]) -> None:
            nonlocal left
            if not watcher.cancelled():
                watcher.exception()  # retrieved, so asyncio does not log it as lost
                left = True
                acquiring.cancel()

        gone.add_done_callback(client_left)
        try:
            lease = await acquiring
        except asyncio.CancelledError:
            self.backend.give_up(acquiring)
            if left and not _cancelling():
                raise ClientGone() from None
            raise
        except BaseException:
            self.backend.give_up(acquiring)
            raise
        finally:
            gone.remove_done_callback(client_left)
        if lease is None:
            raise LockTimeout(f"waited more than {self.timeout} s for the session lock")
        return lease

    async def leave_async(self, admission: Admission) -> None:
        """:meth:`leave` for a task: a backend's release is awaited, never run on the loop
        unless the backend's lease calls are local (``Backend.inline_leases``)."""
        lease = self._take(admission)
        if lease is None or type(lease) is _Unshared:
            if lease is not None and self.metrics is not None:
                _metrics.released(self.metrics, lease)
            return
        try:
            if type(lease) is not _Degraded:
                await self.backend.release_async(lease)
        except BackendUnavailable as error:
            self._not_released(error)
        finally:
            self.queue.release(lease.key, shared=admission.shared)
            if self.metrics is not None:  # after the release: it may find the lease lost
                _metrics.released(self.metrics, lease)

    # -- around the app ------------------------------------------------------------------

    def prepare(self, admission: Admission, request: Request) -> None:
        """Called by the shells under the lease, just before the app runs."""
        check_order(self, request)  # a session layer outside the lock is reported once
        held = request.get(HELD)
        mine = (self._mark, admission.key)
        request[HELD] = (mine,) if held is None else (*held, mine)
        request[HANDLE] = admission
        if admission.shared:
            request[SHARED] = True
        if type(admission.lease) is not _Degraded:
            if self.cookies is not None:
                self.cookies.prepare(admission, request)
            if self.revisions is not None:
                self.revisions.begin(admission, request)

    def judge(self, admission: Admission, request: Request, token: str | None) -> Refusal | None:
        """After :meth:`prepare`: the answer to a request sent from a stale page, if its
        policy is to answer it (``token``: what the request carries, see the shells)."""
        if self.revisions is None:
            return None
        answer = self.revisions.judge(admission, request, token)
        if answer is None:
            return None
        status, body, headers = answer
        return Refusal(status, body, headers)

    def _rotate(self, admission: Admission) -> bool:
        """Mark the request for a new identity, given as its response starts (under the lease)."""
        if admission.lease is None or self._identity is None:
            return False  # too late (response started, released early), or no identity
        if admission.shared:  # a new identity moves the session's records: a writer's work
            logger.warning(
                "session %s: rotate_identity in a shared request: refused (make the route "
                "exclusive)",
                admission.key[:12],
            )
            return False
        if admission.notes is None:
            admission.notes = {}
        admission.notes[_ROTATE_NOTE] = True
        return True

    def loads(self, admission: Admission, request: Request) -> bool:
        """Whether :meth:`prepare` reads a cookie record outside the process: not for a
        browser seen first now, nor when this process has its record as of the lease."""
        cookies = self.cookies
        return (
            self.cookies_block
            and cookies is not None
            and admission.set_identity is None
            and type(admission.lease) is not _Degraded
            and cookies.needs_read(admission, request)
        )

    def _give_back(self, lease: Lease, shared: bool) -> None:
        if type(lease) is _Unshared:
            return
        try:
            if type(lease) is not _Degraded:
                self.backend.release(lease)
        except BackendUnavailable as error:
            self._not_released(error)
        finally:
            self.queue.release(lease.key, shared=shared)

    def _try_backend(self, key: str, shared: bool) -> Lease | None:
        if shared:
            return self.backend.try_acquire(key, shared=True)
        return self.backend.try_acquire(key)  # the keyword only when needed (see above)

    def records_inline(self, admission: Admission) -> bool:
        """Whether :meth:`finish` may write a cookie record on an event loop: under a lease of
        a backend whose record I/O is a system call or two on a held descriptor
        (``Backend.inline_records``). A first visit's record (a new file), a rotation (a
        write and a delete elsewhere) and other backends' records go to a worker thread.
        """
        lease = admission.lease
        return (
            self.backend.inline_records
            and lease is not None
            and type(lease) is not _Unshared
            and not (admission.notes and admission.notes.get(_ROTATE_NOTE))
        )

    def stores(self, admission: Admission, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether :meth:`finish` writes a record: only for a tracked Set-Cookie or a rotation.

        The ASGI shell moves exactly that I/O off the event loop, and nothing else.
        """
        if not self.cookies_block:
            return False
        if admission.notes and admission.notes.get(_ROTATE_NOTE):
            return True
        return _sets_tracked(headers, self._tracked)

    def revises(self, admission: Admission, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether :meth:`finish` may write a revision: the app said the session changed, or
        it sets a tracked cookie (the ASGI shell moves that write off the event loop)."""
        notes = admission.notes
        revision = notes.get("revision") if notes else None
        return revision is not None and (
            getattr(revision, "changed", False) or _sets_tracked(headers, self._tracked)
        )

    def withhold(self, admission: Admission, request: Request, headers: _Headers) -> _Headers:
        """A shared request's response without the tracked session cookie it sets: that
        cookie was made from the session as this reader loaded it, and would undo what a
        writer saved meanwhile. Its change is lost, and said (WARNING, naming the route)."""
        if not _sets_tracked(headers, self._tracked):
            return headers
        if "REQUEST_METHOD" in request:
            where = f"{request['REQUEST_METHOD']} {request.get('PATH_INFO', '')}"
        else:
            where = f"{request.get('method', '')} {request.get('path', '')}"
        logger.warning(
            "session %s: a shared request (%r) changed its session: the change is not saved "
            "(a writer's may have come meanwhile); make this route exclusive",
            admission.key[:12],
            where[:200],
            extra={"sessionlock_key": admission.key[:12], "sessionlock_shared_write": where},
        )
        return [h for h in headers if not _sets_tracked([h], self._tracked)]

    def sets_cookies(
        self, admission: Admission, headers: list[tuple[bytes, bytes]] | list[tuple[str, str]]
    ) -> bool:
        """Whether :meth:`finish` may add a Set-Cookie: an identity to issue, a rotation, a
        tracked cookie set by the app, or one to re-send to a stale browser. Otherwise the
        response gets Server-Timing alone: what tracking costs a response that sets no tracked
        cookie (it then drops the request's tracking state here)."""
        if admission.set_identity is not None:
            return True
        notes = admission.notes
        if notes is not None and notes.get(_ROTATE_NOTE):
            return True
        cookies = self.cookies
        if cookies is None:
            return False
        return _sets_tracked(headers, self._tracked) or not cookies.settle(admission)

    def finish(self, admission: Admission, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Called by the shells as the response starts: its final headers, ``headers`` first
        and unchanged, then what it adds. It reads only Set-Cookie and Cache-Control.

        Cookie tracking records only under the lease: after an early release the next
        request may already run, and its record must not be overwritten by an older one.
        """
        if self.revisions is not None:
            headers = [*headers, *self.revisions.end(admission, headers)]
        if not self.sets_cookies(admission, headers):  # the usual case
            return [*headers, admission.timing()]
        # A response a shared cache may store gets none of our Set-Cookies (they would be
        # served to everyone): the identity, or a re-sent cookie, waits for the next response.
        public = shared_cacheable(headers)
        lease = admission.lease
        if self.cookies is not None and lease is not None and type(lease) is not _Degraded:
            headers = self.cookies.finish(admission, headers, public=public)
        elif self._identity is not None and admission.notes and admission.notes.get(_ROTATE_NOTE):
            fresh = keys.new_identity()
            admission.set_identity = self._identity.issue_for(admission.secure, fresh)
        return [*headers, *admission.response_headers(cookies=not public)]

    # -- outcomes ------------------------------------------------------------------------

    def refuse(self, admission: Admission, error: Exception) -> Refusal:
        """The response for a request that did not get its turn, logged without the key."""
        reason: _metrics.Reason
        if isinstance(error, QueueFull):
            refusal, reason = _QUEUE_FULL, "queue_full"
        elif isinstance(error, LockTimeout):
            refusal, reason = _TIMED_OUT, "timeout"
        else:
            refusal, reason = _UNAVAILABLE, "backend_error"
        if self.metrics is not None:
            self.metrics.refused(reason)
            if reason == "backend_error":
                self.metrics.backend_error()
        logger.warning(
            "session %s refused with %d: %s",
            admission.key[:12],
            refusal.status,
            error,
            extra={"sessionlock_key": admission.key[:12], "sessionlock_status": refusal.status},
        )
        return refusal

    def _take(self, admission: Admission) -> Lease | None:
        leaving = self._leaving
        leaving.acquire()  # by hand, as KeyedQueue.try_acquire does: every request passes here
        try:
            lease, admission.lease = admission.lease, None
        finally:
            leaving.release()
        return lease

    # -- backend outages -----------------------------------------------------------------

    def _degraded(self, key: str, error: BackendUnavailable) -> Lease:
        """``on_backend_error="open"``: the request runs on this process's turn alone (the
        caller holds it). The outage is said once, not per request."""
        if self.metrics is not None:
            self.metrics.backend_error()
        self._outage_began(
            "sessionlock: the backend is unavailable (%s); on_backend_error='open': requests"
            " run serialized within this process only until it answers again",
            error,
        )
        return _Degraded(key)

    def _not_released(self, error: BackendUnavailable) -> None:
        """A release that failed after the response went out: the app's work stands (no
        error for it); the lease expires in the backend (redis://: within ``lease_ttl``)."""
        if self.metrics is not None:
            self.metrics.backend_error()
        self._outage_began(
            "sessionlock: a session could not be released (%s); its lease expires on its own",
            error,
        )

    def _outage_began(self, message: str, error: BackendUnavailable) -> None:
        if self._outage:
            return
        with self._outage_lock:
            if self._outage:
                return
            self._outage = True
        logger.warning(message, error, extra={"sessionlock_outage": True})

    def _backend_back(self) -> None:
        with self._outage_lock:
            if not self._outage:
                return
            self._outage = False
        logger.warning(
            "sessionlock: the backend answers again; sessions are serialized by it again",
            extra={"sessionlock_outage": False},
        )

    def _entered(self, admission: Admission, lease: Lease) -> None:
        admission.lease = lease
        admission.waited = time.perf_counter() - admission.started
        if self.metrics is not None:
            self.metrics.waited(admission.waited)
        _metrics.trace_wait(admission.waited)
        _debug("session %s: its turn after %.1f ms", lease.key[:12], admission.waited * 1000)

    def _remaining(self, admission: Admission) -> float | None:
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (time.perf_counter() - admission.started))


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (Python 3.11+ can tell)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


_DIGEST_CACHE = 4096
_CACHED_KEY = 256  # longer raw keys are hashed every time, never kept in memory


def _debug(message: str, *args: object) -> None:
    """A DEBUG line on the ``sessionlock`` logger, for each decision about a request; costs a
    level check when DEBUG is off. Keys are cut to 12 hex digits of their hash."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(message, *args)


def _sets_tracked(
    headers: list[tuple[bytes, bytes]] | list[tuple[str, str]], tracked: frozenset[bytes]
) -> bool:
    """Whether ``headers`` (ASGI's bytes or WSGI's str) set a cookie named in ``tracked``."""
    for name, value in headers:
        if len(name) == 10 and name.lower() in ("set-cookie", b"set-cookie"):
            raw = value.encode("latin-1") if isinstance(value, str) else value
            if raw.partition(b"=")[0].strip() in tracked:
                return True
    return False


def shared_cacheable(headers: list[tuple[str, str]]) -> bool:
    """Whether the app let shared caches store the response (``public`` or ``s-maxage``)."""
    directives: set[str] = set()
    for name, value in headers:
        if name.lower() == "cache-control":
            directives.update(d.strip().partition("=")[0].lower() for d in value.split(","))
    if not directives or directives & {"private", "no-store"}:
        return False
    return bool(directives & {"public", "s-maxage"})


#: What the shells turn into a refusal rather than an error.
REFUSED = (LockTimeout, QueueFull, BackendUnavailable)


def _exemption(
    exempt: Collection[str] | Callable[[Request], bool] | None, name: str = "exempt"
) -> Callable[[Request], bool] | None:
    """A predicate of the request from path prefixes and methods (or a predicate itself)."""
    if exempt is None:
        return None
    if callable(exempt):
        return exempt
    if isinstance(exempt, str):
        exempt = (exempt,)
    if not isinstance(exempt, Collection) or isinstance(exempt, (bytes, bytearray)):
        raise ConfigurationError(f"{name} takes strings or a predicate, got {exempt!r}")
    if not all(isinstance(e, str) for e in exempt):
        raise ConfigurationError(f"{name} entries must be strings, got {sorted(map(repr, exempt))}")
    prefixes = tuple(e for e in exempt if e.startswith("/"))
    methods = frozenset(e for e in exempt if not e.startswith("/"))
    unknown = methods - _METHODS
    if unknown:
        raise ConfigurationError(
            f"{name} takes path prefixes ('/static/') or HTTP methods, not {sorted(unknown)}"
        )

    def is_exempt(request: Request) -> bool:
        if "REQUEST_METHOD" in request:
            method, path = request["REQUEST_METHOD"], request.get("PATH_INFO", "")
        else:
            method, path = request.get("method", ""), request.get("path", "")
        return method in methods or path.startswith(prefixes)

    return is_exempt
