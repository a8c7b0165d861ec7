"""Cookie sessions: every request of a browser sees the latest session cookie issued to it.

    from sessionlock.wsgi import SessionLockMiddleware

    app.wsgi_app = SessionLockMiddleware(app.wsgi_app)   # Flask: "session" is tracked by default
    app.wsgi_app = SessionLockMiddleware(app.wsgi_app, cookie_session="my_session")  # another

Flask's and Starlette's default sessions live in a signed cookie. Two concurrent requests
carry the same old cookie, so even serialized, the second starts from the old state and its
Set-Cookie erases the first one's change. Under the session's lease this module

- records every Set-Cookie of the tracked name(s) the app issues (value and attributes,
  deletion included) in the backend, for as long as the cookie lives (capped: ``max_ttl``),
  with the *lineage* of the values issued before it;
- re-issues the middleware's identity cookie with a new *generation* alongside, so every
  later request says which state of its jar it was sent with (a browser applies both
  Set-Cookies of one response together);
- hands the app the latest cookie only when the request is a **stale replay**: its
  generation is older than the record's, and it carries exactly the value (or the absence)
  that was current at that generation. The request's ``Cookie`` header is rewritten; the
  original stays under ``sessionlock.original_cookie``;
- re-sends the latest Set-Cookie (and the current generation) to a stale browser when the
  app set none, so it converges.

A jar the client changed itself (a test's ``session_transaction()`` or ``delete_cookie()``,
another session's cookie swapped in) is not a replay: it reaches the app as sent. A cookie
is never substituted where the browser would not have sent it: ``Secure`` ones only to
https, host-only ones only to the host that set them, ``Domain`` ones to matching hosts,
``Path`` ones below their path.

The lock key must be the middleware's identity cookie (:func:`sessionlock.keys.identity`,
the default): it stays the same while the session cookie changes, and it is what a stored
cookie is bound to. A request presenting no identity gets a fresh one and so can never be
handed anyone's cookie. Stored records are sealed (encrypted and authenticated) with a key
derived from the raw identity, which itself is never stored: the backend holds no usable
credential, and a record cannot be moved to another identity.

Requests exempted from the lock (``exempt=``) are not tracked: never exempt a route that
writes the session, or the next request is handed the older recorded cookie.

Cost. Each process keeps the records it last wrote or read (at most 4096 identities), with
the *stamp* of the session's lease at that moment (:attr:`~sessionlock.backends.base.Lease.stamp`).
Every write of a record is preceded by :meth:`~sessionlock.backends.base.Backend.mark`, which
gives the key a new stamp: a later lease of the key with the same stamp proves that nobody,
in any process, wrote the record since, and the cached one is used as it is (no read, no
decryption, no parsing). A backend that keeps no stamps (``memory://``) caches nothing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import cookieheader
from ._types import Request
from .backends.base import Backend, Lease
from .backends.memory import MemoryBackend
from .errors import BackendUnavailable, ConfigurationError
from .keys import Identity, hash_key, new_identity, request_scheme

if TYPE_CHECKING:
    from .core import Admission

__all__ = [
    "DEFAULT_MAX_TTL",
    "NEW_BROWSER_TTL",
    "SessionCookies",
    "SetCookie",
    "parse_set_cookie",
]

logger = logging.getLogger("sessionlock")

#: Longest a record is kept (seconds). Staleness comes from requests in flight and pages
#: left open, so a day of protection against replays is plenty; a record that expired only
#: means an older replay is served as without the middleware. Session cookies (no Max-Age or
#: Expires) and deletions are kept this long; cookies with a lifetime, at most this long.
DEFAULT_MAX_TTL = 24 * 3600.0

#: How long the record of a browser seen once is kept (seconds): a flood of cookie-less
#: requests (each a new identity) leaves records that go within minutes, not a day.
NEW_BROWSER_TTL = 600.0

_NOTE = "cookies"
_ROTATE = "rotate"  # the admission note of sessionlock.rotate_identity()
_VERSION = "5"  # a record's first line; a record of another version reads as absent
_FORMAT = b"sessionlock.cookies.5"  # bound into every sealed record
# Lines per entry in a record: name, header, host, issued and until (in microseconds),
# flags, lineage.
_FIELDS = 7
_COMPLETE, _DELETED = 1, 2  # an entry's flags
# Earlier values remembered per name: how far back a jar the client changed itself (a test's
# session_transaction) is told from a replay. Older requests are replays, unchecked: one that
# waited behind 16 writes (deep queues over several worker processes) must not lose updates.
_LINEAGE = 16
_UNCHECKED = "unchecked"  # current_at: a replay older than the lineage (not a fingerprint)
_MAX_GENERATION = 10**12  # the identity cookie carries at most 12 digits
_MAX_PAIR = 4096  # RFC 6265bis: name + value at most 4096 bytes
_MAX_HEADER = 8192
_KNOWN = 4096  # identities whose keys and last record a process keeps (least recently used go)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 cookie-value: cookie-octets, optionally in double quotes.
_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_VALUE = re.compile(f'{_OCTETS}|"{_OCTETS}"')
_PRINTABLE = re.compile(r"[\x20-\x7e]*")  # the whole header: no CR, LF, NUL or other CTL
_PLAIN_HOST = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable but a backslash: kept as is
_MAX_AGE_ATTR = re.compile(r"(?i)^\s*max-age\s*=")
_MAX_AGE_VALUE = re.compile(r"-?[0-9]{1,12}")
_TIMES = frozenset({"expires", "max-age"})  # attributes that only say how long a cookie lives


class SetCookie:
    """One parsed Set-Cookie header value: name, value, attributes (names lower-cased)."""

    __slots__ = ("attributes", "header", "name", "value")

    def __init__(self, header: str, name: str, value: str, attributes: dict[str, str]) -> None:
        self.header = header
        self.name = name
        self.value = value
        self.attributes = attributes

    def lifetime(self, now: float) -> float | None:
        """Seconds left to live (<= 0: a deletion), or None for a session cookie.

        Max-Age wins over Expires (RFC 6265 5.3); an unparsable one is ignored, as
        browsers do.
        """
        max_age = self.attributes.get("max-age")
        if max_age is not None and _MAX_AGE_VALUE.fullmatch(max_age.strip()):
            return float(int(max_age))
        expires = self.attributes.get("expires")
        if expires is not None:
            when = _expiry(expires)
            return None if when is None else when - now
        return None

    def path_matches(self, request_path: str) -> bool:
        """Whether a browser would send this cookie to ``request_path`` (RFC 6265 5.1.4)."""
        path = self.attributes.get("path", "").strip()
        if not path.startswith("/"):
            return True  # default-path: the request's own directory; do not second-guess
        if request_path == path or path == "/":
            return True
        return request_path.startswith(path) and (
            path.endswith("/") or request_path[len(path)] == "/"
        )

    def __repr__(self) -> str:  # never the value: it is a credential
        return f"SetCookie({self.name!r}, <{len(self.value)} chars>)"


@functools.lru_cache(maxsize=64)
def _expiry(expires: str) -> float | None:
    """The time an ``Expires`` attribute names; None if unparsable or without a zone.

    Remembered: an app re-issuing a cookie repeats one date for a second at least.
    """
    try:
        when = parsedate_to_datetime(expires)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def parse_set_cookie(header: str) -> SetCookie | None:
    """The cookie a Set-Cookie value sets, or None if it is not one we can safely keep.

    Refused: control characters (CR, LF, NUL...), non-ASCII, more than 8 KiB, a name
    that is not an HTTP token, a value outside RFC 6265's cookie-octets, name and value
    over 4096 bytes.
    """
    if len(header) > _MAX_HEADER or not _PRINTABLE.fullmatch(header):
        return None
    pair, *parts = header.split(";")
    name, sep, value = pair.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
        return None
    if len(name) + len(value) > _MAX_PAIR:
        return None
    attributes: dict[str, str] = {}
    for part in parts:
        key, _, attr = part.partition("=")
        attributes[key.strip().lower()] = attr.strip()
    return SetCookie(header, name, value, attributes)


# -- where the request goes ------------------------------------------------------------------


def _request_path(request: Request) -> str:
    if "REQUEST_METHOD" in request:
        return str(request.get("SCRIPT_NAME", "")) + str(request.get("PATH_INFO", "")) or "/"
    return str(request.get("root_path", "")) + str(request.get("path", "")) or "/"


def _request_host(request: Request) -> str:
    """The host the browser addressed, lower-cased, without the port.

    Printable ASCII but backslashes as is; any other host (control characters, non-ASCII)
    escaped (``\\xNN``...), so that a record holds it on one ASCII line, and no host that is
    kept as is can equal an escaped one.
    """
    if "REQUEST_METHOD" in request:
        host = request.get("HTTP_HOST") or request.get("SERVER_NAME") or ""
    else:
        host = ""
        for name, value in request.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1")
                break
        else:
            server = request.get("server")
            host = str(server[0]) if server else ""
    host = str(host).strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host.partition("]")[0] + "]"
    elif host.count(":") == 1:
        host = host.rpartition(":")[0]
    if _PLAIN_HOST.fullmatch(host):
        return host
    return host.encode("unicode_escape").decode("ascii")


# -- sealed records --------------------------------------------------------------------------


class _Seal:
    """Keys for one identity's record: where it is filed, how it is sealed, fingerprints.

    Records that leave the process (file, Redis) are sealed with ChaCha20-Poly1305 from
    ``cryptography`` (a maintained AEAD), the format version, the cookie names and the lock
    key the record is filed under bound as associated data. The AEAD key derives from the
    backend-wide secret *and the raw identity*, which is never stored: a reader of the backend
    can neither open nor forge a record, nor move one to another identity. Records in process
    memory (``memory://``) are kept as they are: encrypting them would hide nothing from the
    process that holds them.
    """

    __slots__ = ("_aad", "_aead", "_mac")

    def __init__(
        self, secret: bytes, identity: str, names: Sequence[str], lock_key: str, *, clear: bool
    ) -> None:
        material = hashlib.blake2b(
            "\0".join(names).encode() + b"\1" + identity.encode("utf-8", "surrogatepass"),
            key=secret,
            person=b"sessionlock.ck3",
        ).digest()
        self._mac = material[32:]
        self._aead = None if clear else ChaCha20Poly1305(material[:32])
        self._aad = _FORMAT + b"\0" + "\0".join(names).encode() + b"\0" + lock_key.encode()

    def fingerprint(self, value: str) -> str:
        """A short keyed digest of a cookie value: the lineage never holds a value itself."""
        return hashlib.blake2b(value.encode("latin-1"), key=self._mac, digest_size=8).hexdigest()

    def seal(self, plain: str) -> str:
        """``plain`` (ASCII) sealed: nonce and ciphertext in hex (a hex round trip costs less
        CPU than base64's; records are short)."""
        if self._aead is None:
            return plain
        nonce = os.urandom(12)  # random 96-bit nonces: far below the collision bound
        return (nonce + self._aead.encrypt(nonce, plain.encode("ascii"), self._aad)).hex()

    def open(self, text: str) -> str | None:
        if self._aead is None:
            return text
        try:
            raw = bytes.fromhex(text)
            return self._aead.decrypt(raw[:12], raw[12:], self._aad).decode("ascii")
        except (ValueError, InvalidTag):  # UnicodeDecodeError is a ValueError
            return None


class _Entry:
    """One tracked name: its latest Set-Cookie, and which value was current at which generation.

    ``lineage``: ``<generation>:<fingerprint>`` items joined by commas, oldest first: the
    generation at which a value became current, and its fingerprint (empty: no cookie).
    ``complete``: the lineage goes back to the identity's start, when the browser had no such
    cookie; False once truncated, or when the record was lost meanwhile. ``deleted``: the
    Set-Cookie removes the cookie. An entry never changes once made (a process caches
    records): a new state is a new entry.
    """

    __slots__ = ("_cookie", "complete", "deleted", "header", "host", "issued", "lineage", "until")

    def __init__(
        self,
        header: str,
        issued: float,
        host: str,
        lineage: str,
        complete: bool,
        until: float,
        deleted: bool,
        cookie: SetCookie | None = None,
    ) -> None:
        self.header = header
        self.issued = issued
        self.host = host
        self.lineage = lineage
        self.complete = complete
        self.until = until
        self.deleted = deleted
        self._cookie = cookie

    @property
    def cookie(self) -> SetCookie | None:
        """The Set-Cookie, parsed (and so validated again) when first needed after a read;
        None if it fails, which a sealed record never does."""
        cookie = self._cookie
        if cookie is None:
            cookie = self._cookie = parse_set_cookie(self.header)
        return cookie

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the latest value ('': no cookie)."""
        return self.lineage.rpartition(",")[2].partition(":")[2]

    def current_at(self, generation: int) -> tuple[bool, str | None]:
        """(known, fingerprint or None) of the value current at ``generation``.

        Older than the lineage remembers (it was cut at :data:`_LINEAGE` values, or the record
        was lost meanwhile): certainly a replay, since a browser's generation only grows, but
        of a value that can no longer be checked: :data:`_UNCHECKED`, handed the latest.
        """
        try:
            for item in reversed(self.lineage.split(",")):
                since, _, fingerprint = item.partition(":")
                if int(since) <= generation:
                    return True, fingerprint or None
        except ValueError:  # never in a record this module wrote: unknown, passed as sent
            return False, None
        return True, (None if self.complete else _UNCHECKED)

    def reaches(self, cookie: SetCookie, request: Request) -> bool:
        """Whether a browser would send ``cookie`` (this entry's) with ``request``: RFC 6265 5.4."""
        attributes = cookie.attributes
        if "secure" in attributes and request_scheme(request) != "https":
            return False
        host = _request_host(request)
        domain = attributes.get("domain", "").strip().lstrip(".").lower()
        if domain:
            if host != domain and not host.endswith("." + domain):
                return False
        elif host != self.host:
            return False
        return cookie.path_matches(_request_path(request))

    def resend(self, cookie: SetCookie, now: float) -> str:
        """The Set-Cookie to send again, its Max-Age shortened by the time elapsed."""
        max_age = cookie.attributes.get("max-age")
        if self.deleted or max_age is None or not max_age.strip().isdigit():
            return self.header
        left = max(1, int(max_age) - int(now - self.issued))
        parts = self.header.split(";")
        return ";".join(
            f" Max-Age={left}" if i and _MAX_AGE_ATTR.match(p) else p for i, p in enumerate(parts)
        )


class _Record:
    """Everything tracked for one identity: the jar's generation and an entry per name.

    Never changed once made: a process may hold it in its cache while requests use it.
    """

    __slots__ = ("entries", "generation")

    def __init__(self, generation: int, entries: dict[str, _Entry]) -> None:
        self.generation = generation
        self.entries = entries


def _dump(generation: int, entries: dict[str, _Entry]) -> str:
    """A record's plain text: lines of ASCII (headers are printable, hosts escaped)."""
    lines = [_VERSION, str(generation)]
    for name, entry in entries.items():
        flags = (_COMPLETE if entry.complete else 0) | (_DELETED if entry.deleted else 0)
        lines += (
            name,
            entry.header,
            entry.host,
            str(int(entry.issued * 1e6)),  # microseconds: a float's repr costs more
            str(int(entry.until * 1e6)),
            str(flags),
            entry.lineage,
        )
    return "\n".join(lines)


def _live(record: _Record | None, now: float) -> _Record | None:
    """``record`` without its expired entries; None if none is left (as the store would)."""
    if record is None:
        return None
    entries = record.entries
    for entry in entries.values():
        if entry.until <= now:
            break
    else:
        return record if entries else None
    live = {name: entry for name, entry in entries.items() if entry.until > now}
    return _Record(record.generation, live) if live else None


class _Known:
    """What a process keeps of one identity: its keys, the lock key they go with, and its
    record as of a lease stamp (``cached``: (stamp, record or None), or None: nothing)."""

    __slots__ = ("cached", "lock_key", "seal")

    def __init__(self, seal: _Seal, lock_key: str) -> None:
        self.seal = seal
        self.lock_key = lock_key
        self.cached: tuple[int, _Record | None] | None = None


class _State:
    """One request's cookie tracking, from prepare (under the lease) to finish."""

    __slots__ = (
        "cacheable",
        "fresh",
        "generation",
        "identity",
        "known",
        "loaded",
        "record",
        "request",
        "stale",
    )

    def __init__(self, identity: str, generation: int, request: Request, fresh: bool) -> None:
        self.fresh = fresh  # a browser seen for the first time (its identity issued now)
        self.identity = identity
        self.generation = generation  # the jar generation the request was sent with
        self.request = request
        self.known: _Known | None = None
        self.cacheable = False  # the lease is the identity's: its stamp stands for the record
        self.loaded = fresh  # whether ``record`` is known (a brand-new identity has none)
        self.record: _Record | None = None
        self.stale: dict[str, _Entry] = {}  # names whose latest cookie was substituted


# -- the tracker -----------------------------------------------------------------------------


class SessionCookies:
    """The :class:`~sessionlock.core.CookieTracker` for signed-cookie sessions.

    names:   the session cookie name(s) ("session" for Flask and Starlette).
    backend: where records live (``get``/``set``/``delete``; every backend has them).
    secret:  the backend-wide hashing secret (the one the lock keys use).
    key:     the lock's key source; must be a :class:`~sessionlock.keys.Identity`.
    max_ttl: the longest a record is kept, in seconds (see :data:`DEFAULT_MAX_TTL`).
    clock:   wall-clock seconds (Expires dates are wall-clock), injectable for tests.
    """

    def __init__(
        self,
        names: str | Sequence[str],
        *,
        backend: Backend,
        secret: bytes,
        key: object,
        max_ttl: float = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        names = (names,) if isinstance(names, str) else tuple(names)
        if not names or not all(isinstance(n, str) and _TOKEN.fullmatch(n) for n in names):
            raise ConfigurationError(
                f"cookie_session takes cookie names (HTTP tokens), got {names!r}"
            )
        if not isinstance(key, Identity):
            raise ConfigurationError(
                "cookie_session needs the identity key (key='identity', the default): "
                "a signed session cookie changes on every write and cannot name the lock, "
                "and stored cookies are only handed back to the identity they were issued to"
            )
        if set(key.names) & set(names):
            raise ConfigurationError(
                f"the identity cookie {key.name!r} cannot also be a tracked session cookie"
            )
        if not max_ttl > 0:
            raise ConfigurationError(f"max_ttl must be seconds > 0, got {max_ttl!r}")
        self.names = names
        self.backend = backend
        self.max_ttl = float(max_ttl)
        self._secret = secret
        self._identity = key
        self._clock = clock
        self._clear = isinstance(backend, MemoryBackend)  # records never leave the process
        self._failing = False
        # identity -> its keys and last record, least recently used first (see _Known)
        self._known: OrderedDict[str, _Known] = OrderedDict()
        # Whether a mark of this process gave a stamp (the backend found its times exact).
        # See _trusted.
        self._stamped = False

    def needs_read(self, admission: Admission, request: Request) -> bool:
        """Whether :meth:`prepare` will read the backend for this request; no I/O here.

        False for a browser seen for the first time (nothing is stored for it), and when this
        process holds the identity's record as of the lease's stamp (nobody wrote it since).
        Call it under the lease, before :meth:`prepare`, which reuses what it looked up.
        """
        state = self._begin(admission, request)
        return state is not None and not state.loaded

    def prepare(self, admission: Admission, request: Request) -> None:
        """Hand the app the latest cookie, if the request is a stale replay of its jar."""
        state = self._begin(admission, request)
        if state is None or state.fresh:  # a brand-new identity has nothing stored
            return
        if not state.loaded:
            state.record = self._read(admission, state)
            state.loaded = True
        record = state.record
        if record is None:
            return  # nothing stored: nothing to hand
        record = state.record = _live(record, self._clock())
        generation = state.generation
        if record is None or generation >= record.generation:
            return  # the jar is current: whatever it carries is the client's own doing
        assert state.known is not None  # every identity but a fresh one is known
        seal = state.known.seal
        header = cookieheader.get(request)
        rewritten = header
        for name, entry in record.entries.items():
            known, expected = entry.current_at(generation)
            if not known:
                continue
            cookie = entry.cookie
            if cookie is None or cookie.name != name or not entry.reaches(cookie, request):
                continue
            sent = cookieheader.values(rewritten, name)
            if expected is not _UNCHECKED:
                held = seal.fingerprint(sent[0]) if len(sent) == 1 else None
                if len(sent) > 1 or held != expected:
                    continue  # not what this jar held then: the client changed it; as sent
            latest = None if entry.deleted else cookie.value
            if sent != ([] if latest is None else [latest]):
                rewritten = cookieheader.rewrite(rewritten, name, latest)
                state.stale[name] = entry
        if rewritten is not header:
            cookieheader.replace(request, rewritten)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "session %s: a stale replay (jar generation %d of %d): handed the latest %s",
                    admission.key[:12],
                    generation,
                    record.generation,
                    ", ".join(state.stale),
                )

    def settle(self, admission: Admission) -> bool:
        """For a response that sets no tracked cookie: True if :meth:`finish` would add
        nothing (the browser is current), the request's state then dropped; the usual case,
        handled without decoding the response's headers."""
        notes = admission.notes
        state = notes.get(_NOTE) if notes is not None else None
        if not isinstance(state, _State):
            return True
        record = state.record
        generation = record.generation if record is not None else state.generation
        if state.stale or generation != state.generation:
            return False
        assert notes is not None  # where the state was
        del notes[_NOTE]  # as finish would: the state holds the request
        return True

    def finish(
        self,
        admission: Admission,
        headers: list[tuple[str, str]],
        *,
        public: bool = False,
    ) -> list[tuple[str, str]]:
        """Record the app's Set-Cookie for tracked names; re-send the latest if it set none.

        ``public``: a shared cache may store the response; nothing is re-sent on it (the
        browser catches up on its next private response).
        """
        notes = admission.notes
        # Taken out: finishing happens once, and the state (which holds the request) must not
        # keep the environ alive through the handle the environ itself holds.
        state = notes.pop(_NOTE, None) if notes is not None else None
        if not isinstance(state, _State):
            return headers
        issued: dict[str, SetCookie | None] = {}
        names = self.names
        for field, value in headers:
            if len(field) == 10 and field.lower() == "set-cookie":
                name = value.partition("=")[0].strip()
                if name in names:
                    issued[name] = parse_set_cookie(value)  # the last one wins, as in browsers
        rotate = notes is not None and notes.get(_ROTATE) is not None
        record = state.record
        generation = record.generation if record is not None else state.generation
        if not issued and not state.stale and not rotate and generation == state.generation:
            return headers  # nothing to record, re-send or tell: the usual current browser
        now = self._clock()
        if issued:
            record = self._record(admission, state, issued, now)
            generation = record.generation
        if public:
            return headers
        for name, entry in state.stale.items():
            cookie = entry.cookie
            if name not in issued and cookie is not None:
                headers = [*headers, ("Set-Cookie", entry.resend(cookie, now))]
        if rotate:
            self._rotate(admission, state, record, now)
        elif generation != state.generation:  # the browser learns which jar state it now has
            admission.set_identity = self._identity.issue_for(
                admission.secure, state.identity, generation
            )
        return headers

    # -- records -------------------------------------------------------------------------

    def _begin(self, admission: Admission, request: Request) -> _State | None:
        """The request's state, made once (under the lease) and kept in its notes: who it
        is, which jar generation it was sent with, and its record if this process has it."""
        notes = admission.notes
        if notes is None:  # the usual first call: nothing to look up
            notes = admission.notes = {}
        else:
            state = notes.get(_NOTE)
            if isinstance(state, _State):
                return state
        fresh = admission.set_identity is not None
        if fresh:
            identity, generation = _cookie_value(admission.set_identity), 0
        elif admission.identity is not None:  # read at admission
            identity, generation = admission.identity, admission.generation
        else:
            found = self._identity._parse(request)
            identity, generation = found if found is not None else (None, 0)
        if identity is None:  # cannot happen with Identity; never guess one
            return None
        state = _State(identity, generation, request, fresh)
        if not fresh:
            known = state.known = self._knowing(identity)
            # The stamp stands for this identity's record only under this identity's lock.
            state.cacheable = known.lock_key == admission.key
            lease = admission.lease
            cached = known.cached
            if (
                state.cacheable
                and cached is not None
                and lease is not None
                and lease.stamp is not None
                and cached[0] == lease.stamp
            ):
                state.record = cached[1]
                state.loaded = True
        notes[_NOTE] = state
        return state

    def _knowing(self, identity: str) -> _Known:
        """The identity's keys (and cached record), made on first use; at most 4096 kept.

        No lock (the event loop may call this): each step is one call into the C
        OrderedDict, atomic under the GIL; two threads making one identity's keys at once
        agree on the first stored.
        """
        known_map = self._known
        known = known_map.get(identity)
        if known is not None:
            try:  # noqa: SIM105 (contextlib.suppress: an object per call, on every request)
                known_map.move_to_end(identity)
            except KeyError:  # evicted meanwhile: still valid here
                pass
            return known
        lock_key = hash_key(self._secret, identity)
        seal = _Seal(self._secret, identity, self.names, lock_key, clear=self._clear)
        known = known_map.setdefault(identity, _Known(seal, lock_key))
        while len(known_map) > _KNOWN:
            try:
                known_map.popitem(last=False)
            except KeyError:  # emptied meanwhile
                break
        return known

    def _forget(self, identity: str) -> None:
        self._known.pop(identity, None)

    def _record(
        self, admission: Admission, state: _State, issued: dict[str, SetCookie | None], now: float
    ) -> _Record:
        """Store what the app issued; the record's generation grows when a value changes."""
        # A record lost meanwhile (expired) restarts from the browser's generation, and
        # cannot say what the browser held before: incomplete.
        # A generation the client claims is trusted only to restart a lost record.
        old = state.record
        entries = dict(old.entries) if old is not None else {}
        generation = old.generation if old is not None else min(state.generation, _MAX_GENERATION)
        start = old is None and state.generation == 0
        following = generation + 1
        changed = False
        # Whether the stored record says the same, but for the times (see _still_current).
        current = old is not None
        known = state.known
        if known is None:  # a brand-new identity: its keys, kept for its return
            known = state.known = self._knowing(state.identity)
            state.cacheable = known.lock_key == admission.key
        host = _request_host(state.request)
        for name, cookie in issued.items():
            entry = entries.get(name)
            if cookie is None:
                # Unsafe to keep or re-send: forget, so requests see what the browser sends.
                logger.warning(
                    "session %s: a tracked Set-Cookie was malformed or oversized; not tracked",
                    admission.key[:12],
                    extra={"sessionlock_key": admission.key[:12]},
                )
                forgotten = entries.pop(name, None) is not None
                changed |= forgotten
                current &= not forgotten
                continue
            lifetime = cookie.lifetime(now)
            deleted = lifetime is not None and lifetime <= 0
            ttl = self.max_ttl if lifetime is None or deleted else min(lifetime, self.max_ttl)
            if state.fresh:  # a visitor who may never come back: its next write keeps it longer
                ttl = min(ttl, NEW_BROWSER_TTL)
            fingerprint = "" if deleted else known.seal.fingerprint(cookie.value)
            current &= entry is not None and _still_current(entry, cookie, deleted, host, now, ttl)
            if entry is None:
                lineage, complete = "", start or old is not None
            else:
                lineage, complete = entry.lineage, entry.complete
            if not lineage or entry is None or entry.fingerprint != fingerprint:
                item = f"{following}:{fingerprint}"
                lineage = f"{lineage},{item}" if lineage else item
                changed = True
                if lineage.count(",") >= _LINEAGE:
                    lineage = lineage.partition(",")[2]
                    complete = False
            entries[name] = _Entry(
                cookie.header, now, host, lineage, complete, now + ttl, deleted, cookie
            )
        if current and old is not None:
            return old  # an unchanged record is not rewritten: the cookie is re-issued as is
        record = _Record(following if changed else generation, entries)
        lease = admission.lease
        if lease is None:
            # Released meanwhile (release_session() from another thread): the next request
            # may run already. Records are written under the lease only (see Core.finish).
            known.cached = None
        else:
            self._store(lease, known, state, record, now)
        return record

    def _rotate(
        self, admission: Admission, state: _State, record: _Record | None, now: float
    ) -> None:
        """Move the record to a new identity, given to this response only, and forget the old.

        Whoever else knew the old identity (one planted in the browser before a login) is
        left with a lineage that has no record: it can never be handed this session.
        """
        identity = new_identity()
        lock_key = hash_key(self._secret, identity)
        seal = _Seal(self._secret, identity, self.names, lock_key, clear=self._clear)
        entries = {}
        for name, entry in (record.entries if record is not None else {}).items():
            cookie = entry.cookie
            if cookie is None:
                continue
            current = "" if entry.deleted else seal.fingerprint(cookie.value)
            lineage = f"1:{current}"
            entries[name] = _Entry(
                entry.header,
                entry.issued,
                entry.host,
                lineage,
                False,
                entry.until,
                entry.deleted,
                cookie,
            )
        sealed = _sealed(seal, _Record(1, entries), now)
        if sealed is not None:  # nobody knows the new identity yet: no lease needed
            try:
                self.backend.set(lock_key, sealed[0], sealed[1])
            except BackendUnavailable as error:
                self._failed("record", error)
        self._forget(state.identity)
        # The old record goes, with a new stamp: no process keeps using its copy of it.
        lease = admission.lease
        try:
            if lease is not None and not state.fresh:
                self.backend.store(lease, None, None)
            else:  # a first visit's record was set() as its key's first (see _store)
                self.backend.delete(admission.key)
        except BackendUnavailable as error:
            self._failed("forget", error)
        admission.set_identity = self._identity.issue_for(
            admission.secure, identity, 1 if entries else 0
        )

    def _store(
        self, lease: Lease, known: _Known, state: _State, record: _Record, now: float
    ) -> None:
        """Write ``record`` under the request's lease (a new stamp with it); then keep it, as
        of that stamp (not if the backend keeps no stamps, nor after a failed write).

        A browser seen first now has a lease that holds nothing in the backend (nobody else
        can know its identity yet): its record is the key's first, set() before the browser
        learns the identity, and not cached (its next lease brings the stamp).
        """
        sealed = _sealed(known.seal, record, now)
        stamp = None
        try:
            if state.fresh:
                if sealed is not None:
                    self.backend.set(lease.key, *sealed)
            else:
                stamp = self.backend.store(lease, *(sealed or (None, None)))
        except BackendUnavailable as error:
            known.cached = None
            # The response goes out as the app made it: this write is just not tracked (a
            # later replay is served as without the middleware). Never a 500 after the app ran.
            self._failed("record", error)
            return
        self._failing = False
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "session %s: cookie record written (generation %d)",
                lease.key[:12],
                record.generation,
            )
        if stamp is None or not state.cacheable:
            known.cached = None
        else:
            self._stamped = True
            known.cached = (stamp, _live(record, now))

    def _read(self, admission: Admission, state: _State) -> _Record | None:
        """The identity's record from the backend, kept as of the lease's stamp."""
        known = state.known
        lease = admission.lease
        assert known is not None
        if lease is None:
            return None
        stamp = lease.stamp
        try:
            text = self.backend.load(lease)
        except BackendUnavailable as error:
            self._failed("read", error)
            return None
        record = None if text is None else self._parse(known.seal, text)
        if stamp is not None and state.cacheable and self._trusted(stamp):
            # Every writer stamps as it writes: as long as the stamp stays, so does this.
            known.cached = (stamp, record)
        return record

    def _trusted(self, stamp: int) -> bool:
        """Whether a lease's ``stamp`` may stand for what was read under it.

        A backend finds out that its file system keeps coarse times (1 or 2 s) by a mark,
        and then keeps no stamps; a process that never marked would not know, and another
        process's mark, cut to the second, could then repeat a stamp seen before. So a read
        is kept as of its stamp only once a mark of this process gave a stamp, or if the
        stamp itself has digits below the microsecond (a mark cut to whole microseconds
        could not repeat a stamp either: a lease, a read, a release and a mark take longer).
        """
        return self._stamped or stamp % 1000 != 0

    def _parse(self, seal: _Seal, text: str) -> _Record | None:
        """A stored record opened and parsed; None if it does not open or is not ours."""
        plain = seal.open(text)
        if plain is None:
            return None
        lines = plain.split("\n")
        if lines[0] != _VERSION or len(lines) % _FIELDS != 2:
            return None
        entries = {}
        try:
            generation = int(lines[1])
            for at in range(2, len(lines), _FIELDS):
                name, header, host, issued, until, flags, lineage = lines[at : at + _FIELDS]
                # Validated again as it is read (the header is parsed in full when needed).
                if (
                    name in self.names
                    and lineage
                    and len(header) <= _MAX_HEADER
                    and _PRINTABLE.fullmatch(header)
                ):
                    bits = int(flags)
                    complete, deleted = bool(bits & _COMPLETE), bool(bits & _DELETED)
                    entries[name] = _Entry(
                        header,
                        int(issued) / 1e6,
                        host,
                        lineage,
                        complete,
                        int(until) / 1e6,
                        deleted,
                    )
        except ValueError:
            return None
        return _Record(generation, entries)

    def _failed(self, what: str, error: BaseException) -> None:
        """Log a backend failure once, until a write succeeds again (no log flood)."""
        if not self._failing:
            self._failing = True
            logger.warning(
                "cookie tracking could not %s its record (%s); requests are served untracked "
                "until the backend recovers",
                what,
                error,
                extra={"sessionlock_degraded": what},
            )


def _sealed(seal: _Seal, record: _Record, now: float) -> tuple[str, float] | None:
    """The live part of ``record``, sealed, and how long it lives; None if nothing is live."""
    live = {}
    last = now
    for name, entry in record.entries.items():
        if entry.until > now:
            live[name] = entry
            last = max(last, entry.until)
    if not live:
        return None
    return seal.seal(_dump(record.generation, live)), last - now


def _still_current(
    entry: _Entry, cookie: SetCookie, deleted: bool, host: str, now: float, ttl: float
) -> bool:
    """Whether ``entry``, as stored, may stand for ``cookie`` issued again now for ``ttl``.

    The same value and attributes but for the expiry (``Expires`` moves every second when
    an app re-issues a server-side session's id), from the same host, and a stored expiry
    that still covers half of ``ttl``: then only times would move, and the record is not
    rewritten (a long-lived session's is still extended now and then). A value that changed
    (Flask and Starlette sign a timestamp into theirs) is always written.

    The one trace of the older times: a re-sent cookie (:meth:`_Entry.resend`) carries the
    stored one's. A stale request is resent the cookie only if it left before its browser got
    the value, and it is answered after this re-issue: its lifetime is short by about its own
    time in flight, or by half of ``ttl`` at most, as a resend is short of it anyway.
    """
    if host != entry.host or deleted != entry.deleted or entry.until - now < ttl / 2:
        return False
    if cookie.header == entry.header:
        return True
    stored = entry.cookie
    return (
        stored is not None
        and stored.value == cookie.value
        and _timeless(stored.attributes) == _timeless(cookie.attributes)
    )


def _timeless(attributes: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in attributes.items() if name not in _TIMES}


def _cookie_value(set_cookie: str | None) -> str | None:
    """The raw identity in a freshly issued identity Set-Cookie (``name=<id>.<gen>.<tag>``)."""
    if set_cookie is None:
        return None
    value = set_cookie.partition("=")[2].partition(".")[0].strip()
    return value or None
