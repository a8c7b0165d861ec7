"""``redis://host:6379/0``: one session serialized across every process of every host.

    from sessionlock.wsgi import SessionLockMiddleware
    app = SessionLockMiddleware(app, backend="redis://redis.internal:6379/0", secret=SECRET)

Also ``rediss://`` (TLS) and ``unix:///run/redis.sock?db=0``; Valkey servers too. Needs
redis-py: ``pip install 'sessionlock[redis]'``. One connection pool per URL per process
(:func:`sessionlock.backends.from_url` makes one backend per URL); redis-py's pool notices a
fork and opens new sockets in the child, and a child forgets its parent's leases.

Lease. A lease is a random ticket (``secrets``) in ``sessionlock:{<key>}:lease`` with a TTL
(``?lease_ttl=10`` seconds by default). Acquire, release, renew and every other step are Lua
scripts (:mod:`sessionlock.backends._redisscripts`), loaded once (``EVALSHA``, reloaded on
``NOSCRIPT``). An uncontended request costs two round trips: acquire and release. One
*watchdog* thread per backend renews every lease this process holds (and every ticket it has
in line) each ``lease_ttl / 3`` in one pipelined round trip, so a long request keeps its
session, while the lease of a process that died (SIGKILL, a lost host) expires within
``lease_ttl``.

Waking. A busy key has a line (a Redis list of tickets). A release hands the lease, inside
its script, to the oldest ticket still alive and pushes the news onto that ticket's own list,
where its waiter blocks in ``BLPOP``: the next waiter, on any host, wakes holding the lease,
one release round trip after the holder let go. That is FIFO across processes and hosts
(inside a process only the head of a key's local queue is in line here). A waiter re-checks
every second at most (:data:`RECHECK`), so a lost wake-up (a restart, a failover) or an
expired holder delays it by that much, never forever. Threads wait in ``BLPOP`` themselves;
an asyncio task's acquire (even an uncontended one: :attr:`inline_leases` is False) and its
release run on a helper thread (:mod:`sessionlock._helpers`) that resolves the task's future,
so the event loop never waits on Redis (no ``redis.asyncio`` pool per event loop to open and
close; the hand-off costs one ``call_soon_threadsafe``). A waiter that times out or is
cancelled leaves the line; a lease handed to it meanwhile is taken (threads) or handed on
(tasks): never leaked.

Shared leases (``shared=True``, readers). A reader's ticket (``s`` + random) is a member of
``sessionlock:{<key>}:readers``, a sorted set scored by the reader's expiry on the server's
clock, pushed forward by the same watchdog round as the exclusive leases (same pipeline), so
a reader whose process died stops counting within ``lease_ttl``. Readers and writers share
one line, in arrival order: a reader gets in at once when no writer holds and nobody waits,
a writer when nobody holds at all and nobody waits. When the exclusive lease is free, the
scripts serve the head of the line: a writer once the last reader left, or a run of readers
(up to the next writer) all at once, each told on its own list. So a reader never overtakes
a writer that waits before it, on any host, and neither side starves. A reader costs the
same two round trips as a writer; it may :meth:`load` the record, never :meth:`mark` or
:meth:`store` (ValueError).

Fencing. Every grant increments the key's ``fence`` (``Lease.token.fence``, a number that
only grows), every :meth:`mark` its ``mark`` (``Lease.stamp``). :meth:`mark` and the value
writes that follow it in the same thread or task are checked in Lua against the lease's
ticket: a holder whose lease expired (a pause longer than ``lease_ttl``) is refused
(BackendUnavailable from :class:`~sessionlock.errors.LeaseLost`, logged), so it cannot
overwrite a newer holder's cookie record.

Values have a TTL in Redis (``ttl=None``: :data:`NO_TTL`); every key of the backend has one,
except the shared secret (one key). So nothing is stuck after a crash, and the number of
values needs no cap of its own: the TTLs bound it (``max_values`` is not taken), and Redis's
``maxmemory`` policy is the last word.

Outages. Every Redis error is BackendUnavailable; nothing is remembered, so the first call
after Redis is back works (redis-py reconnects). redis-py's retries are off: a timed-out
script may have run, and running it again is not what a lock wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
import math
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from .._helpers import Helpers
from ..errors import BackendUnavailable, ConfigurationError, LeaseLost
from . import _redisscripts as lua
from .base import Backend, HeldKey, Lease

try:
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    raise ConfigurationError(
        "redis://, rediss:// and unix:// need redis-py: pip install 'sessionlock[redis]'"
    ) from None

__all__ = ["DEFAULT_LEASE_TTL", "NO_TTL", "RECHECK", "RedisBackend", "from_url", "normalize"]

logger = logging.getLogger("sessionlock")

DEFAULT_LEASE_TTL = 10.0  # seconds a lease lives unless renewed (every lease_ttl / 3)
#: The most a waiter blocks before it re-checks the lease itself (a lost wake-up's cost).
RECHECK = 1.0
#: Seconds a value set with ``ttl=None`` is kept: every key has a TTL.
NO_TTL = 7 * 24 * 3600.0
# Fence and mark outlive the last grant or mark by this much: a session's next click within
# 10 minutes finds its stamp (and a process's cached record); expired, they restart higher.
STATE_TTL = 600.0
_SOCKET_TIMEOUT = RECHECK + 4.0  # longer than any BLPOP block
_CONNECT_TIMEOUT = 2.0
_ERRORS = (redis_py.RedisError, OSError)
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Query options: ours, and redis-py's that make sense here (TLS, database, client name).
_OURS = ("lease_ttl",)
_PASSED = (
    "client_name",
    "db",
    "socket_connect_timeout",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_cert_reqs",
    "ssl_certfile",
    "ssl_check_hostname",
    "ssl_keyfile",
)

# The lease whose mark came last in this thread or task: the value write that follows a mark
# (cookies.py marks, then writes) is checked against it in Lua, and consumes it.
_marked: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "sessionlock_redis_marked", default=None
)


class Grant:
    """A Redis lease's token: its ticket, its fence number, and whether it was lost."""

    __slots__ = ("fence", "lost", "ticket")

    def __init__(self, ticket: str, fence: int) -> None:
        self.ticket = ticket
        self.fence = fence
        self.lost = False

    def __repr__(self) -> str:
        return f"Grant(fence={self.fence}{', lost' if self.lost else ''})"


class RedisBackend(Backend):
    """Leases and values in one Redis database (see the module docstring)."""

    shared = True
    #: Every lease call is a round trip (up to the connect timeout during an outage): an
    #: ASGI request's run on a helper thread (:meth:`acquire_future`, :meth:`release_async`).
    inline_leases = False

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: for tests that move time; values then also carry their expiry as read
        on it (otherwise Redis's TTL alone expires them)."""
        self.url, redis_url, self.lease_ttl = _parse(url)
        self._clock = clock
        self._ttl_ms = str(max(1, round(self.lease_ttl * 1000)))
        self._state_ms = str(round(STATE_TTL * 1000))
        self.recheck = min(RECHECK, self.lease_ttl / 3)
        pool = redis_py.ConnectionPool.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = redis_py.Redis(connection_pool=pool)
        script = self._client.register_script
        self._acquire_script = script(lua.ACQUIRE)
        self._release_script = script(lua.RELEASE)
        self._check_script = script(lua.CHECK)
        self._withdraw_script = script(lua.WITHDRAW)
        self._renew_script = script(lua.RENEW)
        self._keep_script = script(lua.KEEP_WAITING)
        self._mark_script = script(lua.MARK)
        self._set_script = script(lua.SET_HELD)
        self._delete_script = script(lua.DELETE_HELD)
        self._store_script = script(lua.STORE)
        self._secret: bytes | None = None
        self._helpers = Helpers("sessionlock-redis-waiter")
        self._closed = False
        self._reset()
        _after_fork.add(self)

    def _reset(self) -> None:
        # Also in a forked child: the parent's leases and waits are the parent's.
        self._mutex = threading.Lock()
        self._held: dict[str, Lease] = {}  # ticket -> lease held by this process
        self._waiting: dict[str, str] = {}  # ticket -> key, in line right now
        self._stop = threading.Event()
        self._watchdog_pid = 0
        self._failing = False  # the watchdog's last round failed (said once per outage)
        self._disagree = False  # another secret found in Redis (said once)

    def __repr__(self) -> str:
        return f"RedisBackend({_redacted(self.url)!r})"

    # -- secret ------------------------------------------------------------------------

    def secret(self) -> bytes:
        """The hashing secret stored once in Redis (``SET NX``): the same for every host.

        Lost with Redis's data (no persistence, a failover), it is put back by any live
        process's watchdog; pass ``secret=`` to the middleware to depend on nothing.
        """
        if self._secret is None:
            self._check_open()
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    pipe.set(lua.SECRET_KEY, secrets.token_hex(32), nx=True)
                    pipe.get(lua.SECRET_KEY)
                    stored = pipe.execute()[1]
            except _ERRORS as exc:
                raise _unavailable(exc) from exc
            if not isinstance(stored, str) or not re.fullmatch(r"[0-9a-f]{64}", stored):
                raise ConfigurationError(f"{lua.SECRET_KEY} in Redis is not a secret of ours")
            self._secret = bytes.fromhex(stored)
        self._ensure_watchdog()
        return self._secret

    # -- leases ------------------------------------------------------------------------

    def try_acquire(self, key: str, *, shared: bool = False) -> Lease | None:
        key = self._safe(key)
        ticket = _ticket(shared)
        got = self._run(self._acquire_script, key, ticket, "0")
        return None if got is None else self._granted(key, ticket, got)

    def acquire(self, key: str, timeout: float | None, *, shared: bool = False) -> Lease | None:
        if timeout is not None and timeout <= 0:
            return self.try_acquire(key, shared=shared)
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self._safe(key)
        ticket = _ticket(shared)
        got = self._run(self._acquire_script, key, ticket, "1")
        if got is not None:
            return self._granted(key, ticket, got)
        wake = lua.names(key)[4] + "wake:" + ticket
        self._enlist(ticket, key)
        try:
            while True:
                left = math.inf if deadline is None else deadline - time.monotonic()
                if left <= 0:  # a lease handed over as we give up is taken
                    got = self._run(self._withdraw_script, key, ticket, "0")
                    return None if got is None else self._granted(key, ticket, got)
                got = self._wait(key, ticket, wake, min(self.recheck, left))
                if got is not None:
                    return self._granted(key, ticket, got)
        except BaseException:
            self._abandon(key, ticket)
            raise
        finally:
            self._delist(ticket)

    def acquire_future(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> asyncio.Future[Lease | None]:
        """A future a helper thread resolves: the lease at once if the key is free (one
        round trip), else after waiting in ``BLPOP`` for the task. Nothing here talks to
        Redis on the calling thread, the event loop (``timeout <= 0``: one try, no line)."""
        loop = asyncio.get_running_loop()
        self._check_open()
        line = timeout is None or timeout > 0
        waiting = _TaskWait(self, self._safe(key), loop, line=line, shared=shared)
        future = waiting.future
        if not line:
            self._helpers.run(waiting.run)
            return future
        future.add_done_callback(waiting.finished)
        if timeout is not None:
            timer = loop.call_later(timeout, waiting.expire)
            future.add_done_callback(lambda _: timer.cancel())
        self._helpers.run(waiting.run)
        return future

    async def acquire_async(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> Lease | None:
        return await self._await_lease(self.acquire_future(key, timeout, shared=shared))

    def release(self, lease: Lease) -> None:
        grant = _grant_of(lease)
        with self._mutex:
            self._held.pop(grant.ticket, None)  # no longer renewed, whatever happens next
        if _marked.get() is lease:
            _marked.set(None)
        try:
            result = self._run(self._release_script, lease.key, grant.ticket, None, check=False)
        finally:
            if self._closed:
                self._client.connection_pool.disconnect()
        if result == -1 and not grant.lost:
            grant.lost = True
            _say_lost(lease.key, "at its release")

    async def release_async(self, lease: Lease) -> None:
        """:meth:`release` on a helper thread; the task awaits it (a cancelled task does not
        stop it). Its BackendUnavailable is raised here."""
        if _marked.get() is lease:
            _marked.set(None)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():  # the task was cancelled meanwhile
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def job() -> None:
            error: BaseException | None = None
            try:
                self.release(lease)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(settle, error)

        self._helpers.run(job)
        await done

    def _release_elsewhere(self, lease: Lease) -> None:
        self._helpers.run(functools.partial(_release_quietly, self, lease))

    def mark(self, lease: Lease) -> int:
        """The key's next mark, if ``lease`` still holds it; else BackendUnavailable (from
        LeaseLost), and nothing may be written under it. ValueError for a shared lease."""
        grant = _grant_of(lease)
        _writable(lease, "marked")
        lease_name, _, state, _, _ = lua.names(lease.key)
        stamp = self._call(self._mark_script, [lease_name, state], [grant.ticket, self._state_ms])
        if stamp == -1:
            raise self._refused(lease, "not marked")
        lease.stamp = int(stamp)
        _marked.set(lease)
        return lease.stamp

    def store(self, lease: Lease, value: str | None, ttl: float | None) -> int:
        """The held key's own record replaced (None: deleted) and its mark bumped, in one
        round trip, refused in Lua if the lease is lost (BackendUnavailable from LeaseLost).

        The record shares the lease's hash tag, so the check and the write are one step.
        ValueError for a shared lease (nothing sent).
        """
        grant = _grant_of(lease)
        _writable(lease, "stored")
        lease_name, _, state, _, _ = lua.names(lease.key)
        text, px = ("", "0") if value is None else self._stored(value, ttl)
        keys = [lease_name, state, lua.value_name(lease.key)]
        stamp = self._call(self._store_script, keys, [grant.ticket, self._state_ms, text, px])
        if stamp == -1:
            raise self._refused(lease, "its record not stored")
        lease.stamp = int(stamp)
        return lease.stamp

    # -- values ------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        self._check_open()
        try:
            text = self._client.get(lua.value_name(self._safe(key)))
        except _ERRORS as exc:
            raise _unavailable(exc) from exc
        if not isinstance(text, str):
            return None
        expires, newline, value = text.partition("\n")
        if not newline:  # not written by this backend
            return None
        if expires != "-" and self._clock is not None and float(expires) <= self._clock():
            return None
        return value

    def set(self, key: str, value: str, ttl: float | None) -> None:
        text, px = self._stored(value, ttl)
        name = lua.value_name(self._safe(key))
        lease = self._writing_under()
        if lease is None:
            self._check_open()
            try:
                self._client.set(name, text, px=int(px))
            except _ERRORS as exc:
                raise _unavailable(exc) from exc
            return
        grant = _grant_of(lease)
        lease_name = lua.names(lease.key)[0]
        if not self._call(self._set_script, [lease_name, name], [grant.ticket, text, px]):
            raise self._refused(lease, "its cookie record not written")

    def delete(self, key: str) -> None:
        name = lua.value_name(self._safe(key))
        lease = self._writing_under()
        if lease is None:
            self._check_open()
            try:
                self._client.delete(name)
            except _ERRORS as exc:
                raise _unavailable(exc) from exc
            return
        lease_name = lua.names(lease.key)[0]
        if not self._call(self._delete_script, [lease_name, name], [_grant_of(lease).ticket]):
            raise self._refused(lease, "its cookie record not deleted")

    def _stored(self, value: str, ttl: float | None) -> tuple[str, str]:
        """(text, PX ms) of a value: its expiry as read on an injected clock ("-": none, the
        TTL alone expires it), a newline, the value."""
        seconds = NO_TTL if ttl is None else max(ttl, 0.001)
        expires = "-" if self._clock is None else repr(self._clock() + seconds)
        return expires + "\n" + value, str(max(1, math.ceil(seconds * 1000)))

    def _writing_under(self) -> Lease | None:
        """The lease a mark of this thread or task just checked, if this process still
        holds it: the write that follows is checked against it too (and consumes it)."""
        lease = _marked.get()
        if lease is None:
            return None
        _marked.set(None)
        with self._mutex:
            held = _grant_of(lease).ticket in self._held
        return lease if held else None

    # -- the watchdog ----------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        """Start this process's watchdog (again after a fork: threads do not survive it)."""
        if self._watchdog_pid == os.getpid() or self._closed:
            return
        with self._mutex:
            if self._watchdog_pid == os.getpid():
                return
            self._watchdog_pid = os.getpid()
        thread = threading.Thread(
            target=_watch,
            args=(weakref.ref(self), self._stop, self.lease_ttl / 3),
            name="sessionlock-redis-watchdog",
            daemon=True,
        )
        thread.start()

    def renew(self) -> None:
        """Renew every lease held and every ticket in line here, in one round trip (the
        watchdog's step); say which leases were lost. Raises BackendUnavailable."""
        with self._mutex:
            held = list(self._held.values())
            waiting = list(self._waiting.items())
        if not held and not waiting and self._secret is None:
            return
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for lease in held:
                    lease_name, _, state, readers, _ = lua.names(lease.key)
                    args = [_grant_of(lease).ticket, self._ttl_ms, self._state_ms]
                    keys = [lease_name, state, readers]
                    self._renew_script(keys=keys, args=args, client=pipe)
                for ticket, key in waiting:
                    _, queue, _, _, prefix = lua.names(key)
                    keys = [queue, prefix + "alive:" + ticket]
                    self._keep_script(keys=keys, args=[self._ttl_ms, self._state_ms], client=pipe)
                if self._secret is not None:  # put back if lost (a restart, a failover)
                    pipe.set(lua.SECRET_KEY, self._secret.hex(), nx=True)
                    pipe.get(lua.SECRET_KEY)
                results = pipe.execute()
        except _ERRORS as exc:
            raise _unavailable(exc) from exc
        for lease, renewed in zip(held, results[: len(held)], strict=True):
            grant = _grant_of(lease)
            with self._mutex:
                still = grant.ticket in self._held  # not released meanwhile
            if not renewed and still and not grant.lost:
                grant.lost = True
                _say_lost(lease.key, "while held (not renewed in time)")
        if self._secret is not None and results[-1] != self._secret.hex() and not self._disagree:
            self._disagree = True
            logger.error(
                "sessionlock: the secret in Redis (%s) is not this process's: processes may"
                " hash one session to different locks; restart them, or pass secret=",
                lua.SECRET_KEY,
            )

    # -- plumbing ------------------------------------------------------------------------

    def _wait(self, key: str, ticket: str, wake: str, block: float) -> list[Any] | None:
        """Block up to ``block`` s for the lease's arrival on ``wake``, then re-check."""
        try:
            message = self._client.blpop([wake], timeout=max(block, 0.001))
        except _ERRORS as exc:
            raise _unavailable(exc) from exc
        if message is not None and message[1] != "gone":
            fence, _, mark = str(message[1]).partition(" ")
            return [fence, mark]
        got: list[Any] | None = self._run(self._check_script, key, ticket, None)
        return got

    def _run(
        self, script: Any, key: str, ticket: str, flag: str | None, *, check: bool = True
    ) -> Any:
        """One of the line's scripts (KEYS: lease, queue, state, readers) for ``ticket``."""
        lease_name, queue, state, readers, prefix = lua.names(key)
        args = [ticket, self._ttl_ms, self._state_ms, prefix]
        if flag is not None:
            args.append(flag)
        return self._call(script, [lease_name, queue, state, readers], args, check=check)

    def _call(
        self, script: Any, keys: Sequence[str], args: Sequence[str], *, check: bool = True
    ) -> Any:
        if check:  # a closed backend still releases the leases held when it closed
            self._check_open()
        try:
            return script(keys=keys, args=args)
        except _ERRORS as exc:
            raise _unavailable(exc) from exc

    def _granted(self, key: str, ticket: str, got: Sequence[Any]) -> Lease:
        """The lease a script granted: registered for renewal."""
        mark, fence = got[1], int(got[0])
        stamp = None if mark == "-" else int(mark)
        shared = ticket.startswith(lua.SHARED)
        lease = Lease(key, Grant(ticket, fence), stamp, fence, shared=shared)
        with self._mutex:
            self._held[ticket] = lease
        self._ensure_watchdog()
        return lease

    def _enlist(self, ticket: str, key: str) -> None:
        with self._mutex:
            self._waiting[ticket] = key
        self._ensure_watchdog()

    def _delist(self, ticket: str) -> None:
        with self._mutex:
            self._waiting.pop(ticket, None)

    def _abandon(self, key: str, ticket: str) -> None:
        """Out of line after a failure; a lease that arrived meanwhile goes on at once."""
        with contextlib.suppress(BackendUnavailable):
            got = self._run(self._withdraw_script, key, ticket, "0")
            if got is not None:
                self.release(self._granted(key, ticket, got))

    def _refused(self, lease: Lease, what: str) -> BackendUnavailable:
        grant = _grant_of(lease)
        grant.lost = True
        _say_lost(lease.key, what)
        error = BackendUnavailable("the session's Redis lease was lost: " + what)
        error.__cause__ = LeaseLost("expired or taken over while held")
        return error

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable(f"{self!r} is closed")

    def _safe(self, key: str) -> str:
        if _SAFE_KEY.fullmatch(key):
            return key  # a hex digest (as from Core) or another safe name
        # Not a hash already: never let it reach Redis (or a hash tag) as given.
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), key=self.secret())
        return "h" + digest.hexdigest()[:64]

    def held_keys(self) -> list[HeldKey]:
        """The keys held or queued for right now (``sessionlock held``), sorted by key.

        Read only: one ``SCAN`` of the backend's prefix (on Redis Cluster, of the node the
        URL names), then the holder, the live readers and the live tickets in line per key.
        """
        self._check_open()
        ends = (":lease", ":readers", ":queue")
        start = len(lua.PREFIX) + 1  # after "sessionlock:{"
        try:
            names = self._client.scan_iter(match=lua.PREFIX + "{*}:*", count=1000)
            keys = sorted({n[start : n.index("}:")] for n in names if n.endswith(ends)})
            with self._client.pipeline(transaction=False) as pipe:
                pipe.time()
                for key in keys:
                    lease, queue, _, _, _ = lua.names(key)
                    pipe.exists(lease)
                    pipe.lrange(queue, 0, -1)
                first = pipe.execute()
            seconds, micros = first[0]
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            lines = first[2::2]
            with self._client.pipeline(transaction=False) as pipe:
                for key, line in zip(keys, lines, strict=True):
                    _, _, _, readers_name, prefix = lua.names(key)
                    pipe.zcount(readers_name, f"({now_ms}", "+inf")  # expired ones are dead
                    for ticket in line:
                        pipe.exists(prefix + "alive:" + ticket)
                second = pipe.execute()
        except _ERRORS as exc:
            raise _unavailable(exc) from exc
        found = []
        answers = iter(second)
        for key, held, line in zip(keys, first[1::2], lines, strict=True):
            readers = int(next(answers))
            queued = sum(int(next(answers)) for _ in line)
            mode: Literal["exclusive", "shared", "free"] = (
                "exclusive" if held else "shared" if readers else "free"
            )
            if held or readers or queued:
                found.append(HeldKey(key, mode, readers, queued))
        return found

    def close(self) -> None:
        """Stop the watchdog and close the pool's connections; leave the registry.

        Leases held now are still released normally; anything else raises
        BackendUnavailable.
        """
        super().close()
        self._closed = True
        self._stop.set()
        _after_fork.discard(self)
        self._client.connection_pool.disconnect()


class _TaskWait:
    """One task's wait, run on a helper thread that alone talks to Redis for it."""

    __slots__ = ("_backend", "_given_up", "_key", "_line", "_loop", "_ticket", "future")

    def __init__(
        self,
        backend: RedisBackend,
        key: str,
        loop: asyncio.AbstractEventLoop,
        *,
        line: bool,
        shared: bool,
    ) -> None:
        self._backend = backend
        self._key = key
        self._loop = loop
        self._line = line  # False: one try, never in line (the future says None if busy)
        self._ticket = _ticket(shared)
        self._given_up = False  # set on the loop; read by the helper between blocks
        self.future: asyncio.Future[Lease | None] = loop.create_future()

    @property
    def _wake(self) -> str:
        return lua.names(self._key)[4] + "wake:" + self._ticket

    def run(self) -> None:
        """The helper's job: join the line, block until the lease comes or the task leaves."""
        backend, key, ticket = self._backend, self._key, self._ticket
        try:
            got = backend._run(backend._acquire_script, key, ticket, "1" if self._line else "0")
            if got is None and not self._line:
                self._deliver(None, None)
                return
            if got is None:
                backend._enlist(ticket, key)
                try:
                    while got is None:
                        if self._given_up:
                            got = backend._run(backend._withdraw_script, key, ticket, "0")
                            if got is not None:  # arrived as the task left: handed on
                                backend.release(backend._granted(key, ticket, got))
                            return
                        got = backend._wait(key, ticket, self._wake, backend.recheck)
                finally:
                    backend._delist(ticket)
            lease = backend._granted(key, ticket, got)
        except BaseException as error:
            backend._abandon(key, ticket)
            self._deliver(None, error)
            return
        self._deliver(lease, None)

    def _deliver(self, lease: Lease | None, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._settle, lease, error)
        except RuntimeError:  # the loop is closed: nobody will take the lease
            if lease is not None:
                with contextlib.suppress(BackendUnavailable):
                    self._backend.release(lease)

    def _settle(self, lease: Lease | None, error: BaseException | None) -> None:
        if self.future.done():  # the task gave up meanwhile: the lease goes on
            if lease is not None:
                release = functools.partial(_release_quietly, self._backend, lease)
                self._backend._helpers.run(release)
        elif lease is not None or error is None:
            self.future.set_result(lease)
        else:
            wrapped = error if isinstance(error, BackendUnavailable) else _unavailable(error)
            self.future.set_exception(wrapped)

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def finished(self, future: asyncio.Future[Lease | None]) -> None:
        """Timed out or cancelled: the helper, maybe blocked, is woken to leave the line."""
        if future.cancelled() or future.exception() is not None or future.result() is None:
            self._given_up = True
            self._backend._helpers.run(self._push_gone)

    def _push_gone(self) -> None:
        client = self._backend._client
        with contextlib.suppress(*_ERRORS), client.pipeline(transaction=False) as pipe:
            pipe.rpush(self._wake, "gone")
            pipe.pexpire(self._wake, int(self._backend._ttl_ms))
            pipe.execute()


def _release_quietly(backend: RedisBackend, lease: Lease) -> None:
    with contextlib.suppress(BackendUnavailable):
        backend.release(lease)


def _grant_of(lease: Lease) -> Grant:
    if not isinstance(lease.token, Grant):
        raise TypeError(f"{lease!r} was not granted by a RedisBackend")
    return lease.token


def _ticket(shared: bool) -> str:
    """A random ticket; a shared one starts with ``s`` (the scripts read its kind there)."""
    return (lua.SHARED if shared else "") + secrets.token_hex(16)


def _writable(lease: Lease, what: str) -> None:
    if lease.shared:
        raise ValueError(f"{lease!r} is shared (a reader's): it may not be {what}")


def _say_lost(key: str, what: str) -> None:
    logger.warning(
        "session %s: its Redis lease was lost (expired or taken over): %s", key[:12], what
    )


def _unavailable(exc: BaseException) -> BackendUnavailable:
    if isinstance(exc, BackendUnavailable):
        return exc
    error = BackendUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


_after_fork: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _reset_in_child() -> None:
    for backend in list(_after_fork):
        backend._reset()


if hasattr(os, "register_at_fork"):  # not on Windows (docs/platforms.md)
    os.register_at_fork(after_in_child=_reset_in_child)


def _watch(ref: weakref.ref[RedisBackend], stop: threading.Event, every: float) -> None:
    """The watchdog thread: renew every ``every`` seconds. It holds the backend weakly, so a
    backend nobody uses any more is still collected."""
    while not stop.wait(every):
        backend = ref()
        if backend is None:
            return
        try:
            backend.renew()
        except Exception as error:  # the watchdog must outlive any one round
            # BackendUnavailable, or whatever redis-py raises when a connection is closed
            # under it (ValueError: I/O operation on closed file): the next round tries again.
            if not backend._failing:
                backend._failing = True
                logger.warning(
                    "sessionlock: cannot renew Redis leases: %s",
                    error if isinstance(error, BackendUnavailable) else type(error).__name__,
                )
        else:
            if backend._failing:
                backend._failing = False
                logger.warning("sessionlock: Redis leases renewed again")
        del backend


# -- URLs ----------------------------------------------------------------------------------


def normalize(url: str) -> str:
    """One spelling per server, database and options (``redis://host:6379/0``)."""
    return _parse(url)[0]


def from_url(url: str) -> RedisBackend:
    """A new backend (:func:`sessionlock.backends.from_url` shares one per URL per process)."""
    return RedisBackend(url)


def _parse(url: str) -> tuple[str, str, float]:
    """(normalized URL, redis-py's URL without our options, lease_ttl)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {_redacted(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix") or parts.fragment:
        raise ConfigurationError(f"not a Redis URL: {_redacted(url)!r}")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigurationError(f"bad query in Redis URL {_redacted(url)!r}") from None
    known = _OURS + _PASSED
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r} in Redis URL {_redacted(url)!r};"
            f" known: {', '.join(sorted(known))}"
        )
    if any(len(values) != 1 for values in query.values()):
        raise ConfigurationError(f"an option given twice in Redis URL {_redacted(url)!r}")
    options = {name: values[0] for name, values in query.items()}
    lease_ttl = _lease_ttl(options.pop("lease_ttl", None), url)
    userinfo = parts.netloc.rpartition("@")[0]
    userinfo = userinfo + "@" if userinfo else ""
    if scheme == "unix":
        if not parts.path.startswith("/") or parts.hostname:
            raise ConfigurationError(
                f"unix:// needs an absolute socket path, got {_redacted(url)!r}"
            )
        base = f"unix://{userinfo}{quote(parts.path)}"
        options["db"] = options.get("db", "0")
    else:
        host = (parts.hostname or "localhost").lower()
        if ":" in host:
            host = f"[{host}]"
        path_db = parts.path.strip("/")
        if path_db and "db" in options:
            raise ConfigurationError(f"the database given twice in {_redacted(url)!r}")
        db = path_db or options.pop("db", "0")
        if not db.isdigit():
            raise ConfigurationError(f"the database must be a number in {_redacted(url)!r}")
        base = f"{scheme}://{userinfo}{host}:{port or 6379}/{int(db)}"
    if not options.get("db", "0").isdigit():
        raise ConfigurationError(f"the database must be a number in {_redacted(url)!r}")
    passed = urlencode(sorted(options.items()))
    redis_url = base + ("?" + passed if passed else "")
    ours = sorted(options.items())
    if lease_ttl != DEFAULT_LEASE_TTL:
        ours.append(("lease_ttl", f"{lease_ttl:g}"))
    normalized = base + ("?" + urlencode(sorted(ours)) if ours else "")
    return normalized, redis_url, lease_ttl


def _lease_ttl(text: str | None, url: str) -> float:
    if text is None:
        return DEFAULT_LEASE_TTL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 3600:
        raise ConfigurationError(
            f"lease_ttl must be seconds from 0.1 to 3600, got {text!r} in {_redacted(url)!r}"
        )
    return value


def _redacted(url: str) -> str:
    """``url`` without its password (never logged or shown)."""
    head, at, tail = url.partition("@")
    if not at or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in userinfo else url
