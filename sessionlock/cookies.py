"""Cookie sessions: every request of a browser sees the latest session cookie issued to it.

    from sessionlock.wsgi import SessionLockMiddleware

    app.wsgi_app = SessionLockMiddleware(app.wsgi_app, cookie_session="session")   # Flask

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
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import cookieheader
from ._types import Request
from .backends.base import Backend
from .backends.memory import MemoryBackend
from .errors import BackendUnavailable, ConfigurationError
from .keys import Identity, new_identity, request_scheme

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
_FORMAT = b"sessionlock.cookies.3"  # bound into every sealed record
_LINEAGE = 16  # earlier values remembered per name: how far back a replay is recognized
_MAX_GENERATION = 10**12  # the identity cookie carries at most 12 digits
_MAX_PAIR = 4096  # RFC 6265bis: name + value at most 4096 bytes
_MAX_HEADER = 8192
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 cookie-value: cookie-octets, optionally in double quotes.
_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_VALUE = re.compile(f'{_OCTETS}|"{_OCTETS}"')
_PRINTABLE = re.compile(r"[\x20-\x7e]*")  # the whole header: no CR, LF, NUL or other CTL
_MAX_AGE_ATTR = re.compile(r"(?i)^\s*max-age\s*=")


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
        if max_age is not None and re.fullmatch(r"-?[0-9]{1,12}", max_age.strip()):
            return float(int(max_age))
        expires = self.attributes.get("expires")
        if expires is not None:
            try:
                when = parsedate_to_datetime(expires)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                return None
            return when.timestamp() - now
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
    """The host the browser addressed, lower-cased, without the port."""
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
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


# -- sealed records --------------------------------------------------------------------------


class _Seal:
    """Keys for one identity's record: where it is filed, how it is sealed, fingerprints.

    Records that leave the process (file, Redis) are sealed with ChaCha20-Poly1305 from
    ``cryptography`` (a maintained AEAD), the format version, the cookie names and the record's
    own key bound as associated data. Every key derives from the backend-wide secret *and the
    raw identity*, which is never stored: a reader of the backend can neither open nor forge a
    record, nor move one to another identity. Records in process memory (``memory://``) are
    kept as they are: encrypting them would hide nothing from the process that holds them.
    """

    __slots__ = ("_aad", "_aead", "_mac", "store_key")

    def __init__(self, secret: bytes, identity: str, names: Sequence[str], *, clear: bool) -> None:
        material = hashlib.blake2b(
            "\0".join(names).encode() + b"\1" + identity.encode("utf-8", "surrogatepass"),
            key=secret,
            person=b"sessionlock.ck3",
        ).digest()
        self._mac = material[32:]
        # Hex, like every key a backend sees; unrelated to the lock key of the identity.
        digest = hashlib.blake2b(material, digest_size=16, person=b"sessionlock.ckid")
        self.store_key = digest.hexdigest()
        self._aead = None if clear else ChaCha20Poly1305(material[:32])
        self._aad = _FORMAT + b"\0" + "\0".join(names).encode() + b"\0" + self.store_key.encode()

    def fingerprint(self, value: str) -> str:
        """A short keyed digest of a cookie value: the lineage never holds a value itself."""
        return hashlib.blake2b(value.encode("latin-1"), key=self._mac, digest_size=8).hexdigest()

    def seal(self, plain: bytes) -> str:
        if self._aead is None:
            return plain.decode("ascii")
        nonce = secrets.token_bytes(12)  # random 96-bit nonces: far below the collision bound
        sealed = self._aead.encrypt(nonce, plain, self._aad)
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, text: str) -> bytes | None:
        if self._aead is None:
            return text.encode("ascii", "replace")
        try:
            raw = base64.urlsafe_b64decode(text.encode("ascii"))
            return self._aead.decrypt(raw[:12], raw[12:], self._aad)
        except (ValueError, UnicodeEncodeError, InvalidTag):
            return None


class _Entry:
    """One tracked name: its latest Set-Cookie, and which value was current at which generation.

    ``lineage`` lists (generation it became current, fingerprint or None for "no cookie"),
    oldest first. ``complete``: the lineage goes back to the identity's start, when the
    browser had no such cookie; False once truncated, or when the record was lost meanwhile.
    """

    __slots__ = ("complete", "cookie", "host", "issued", "lineage", "until")

    def __init__(
        self,
        cookie: SetCookie,
        issued: float,
        host: str,
        lineage: list[tuple[int, str | None]],
        complete: bool,
        until: float,
    ) -> None:
        self.cookie = cookie
        self.issued = issued
        self.host = host
        self.lineage = lineage
        self.complete = complete
        self.until = until

    @property
    def deleted(self) -> bool:
        lifetime = self.cookie.lifetime(self.issued)
        return lifetime is not None and lifetime <= 0

    @property
    def latest(self) -> str | None:
        """The value a current browser sends (None: it sends none)."""
        return None if self.deleted else self.cookie.value

    def current_at(self, generation: int) -> tuple[bool, str | None]:
        """(known, fingerprint or None) of the value current at ``generation``."""
        for since, fingerprint in reversed(self.lineage):
            if since <= generation:
                return True, fingerprint
        return self.complete, None

    def reaches(self, request: Request) -> bool:
        """Whether a browser would send this cookie with ``request`` (RFC 6265 5.4)."""
        attributes = self.cookie.attributes
        if "secure" in attributes and request_scheme(request) != "https":
            return False
        host = _request_host(request)
        domain = attributes.get("domain", "").strip().lstrip(".").lower()
        if domain:
            if host != domain and not host.endswith("." + domain):
                return False
        elif host != self.host:
            return False
        return self.cookie.path_matches(_request_path(request))

    def resend(self, now: float) -> str:
        """The Set-Cookie to send again, its Max-Age shortened by the time elapsed."""
        max_age = self.cookie.attributes.get("max-age")
        if self.deleted or max_age is None or not max_age.strip().isdigit():
            return self.cookie.header
        left = max(1, int(max_age) - int(now - self.issued))
        parts = self.cookie.header.split(";")
        return ";".join(
            f" Max-Age={left}" if i and _MAX_AGE_ATTR.match(p) else p for i, p in enumerate(parts)
        )

    def dump(self) -> dict[str, Any]:
        return {
            "h": self.cookie.header,
            "t": self.issued,
            "host": self.host,
            "l": self.lineage,
            "c": self.complete,
            "u": self.until,
        }

    @classmethod
    def load(cls, data: Any) -> _Entry | None:
        try:
            cookie = parse_set_cookie(data["h"])
            lineage = [(int(g), None if f is None else str(f)) for g, f in data["l"]]
            if cookie is None or not lineage:
                return None
            return cls(
                cookie,
                float(data["t"]),
                str(data["host"]),
                lineage,
                bool(data["c"]),
                float(data["u"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class _Record:
    """Everything tracked for one identity: the jar's generation and an entry per name."""

    __slots__ = ("entries", "generation")

    def __init__(self, generation: int, entries: dict[str, _Entry]) -> None:
        self.generation = generation
        self.entries = entries


class _State:
    """One request's cookie tracking, from prepare (under the lease) to finish."""

    __slots__ = ("fresh", "generation", "identity", "record", "request", "seal", "stale")

    def __init__(self, seal: _Seal, identity: str, generation: int, request: Request) -> None:
        self.fresh = False  # a browser seen for the first time (its identity issued now)
        self.seal = seal
        self.identity = identity
        self.generation = generation  # the jar generation the request was sent with
        self.request = request
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

    def prepare(self, admission: Admission, request: Request) -> None:
        """Hand the app the latest cookie, if the request is a stale replay of its jar."""
        fresh = admission.set_identity is not None
        identity = _cookie_value(admission.set_identity) if fresh else self._identity(request)
        if identity is None:  # cannot happen with Identity; never guess one
            return
        generation = 0 if fresh else self._identity.generation(request)
        seal = _Seal(self._secret, identity, self.names, clear=self._clear)
        state = _State(seal, identity, generation, request)
        state.fresh = fresh
        if admission.notes is None:
            admission.notes = {}
        admission.notes[_NOTE] = state
        if fresh:  # a brand-new identity has nothing stored, by construction
            return
        record = state.record = self._load(state.seal)
        if record is None or generation >= record.generation:
            return  # the jar is current: whatever it carries is the client's own doing
        header = cookieheader.get(request)
        rewritten = header
        for name, entry in record.entries.items():
            known, expected = entry.current_at(generation)
            if not known or not entry.reaches(request):
                continue
            sent = cookieheader.values(rewritten, name)
            held = state.seal.fingerprint(sent[0]) if len(sent) == 1 else None
            if len(sent) > 1 or held != expected:
                continue  # not what this jar held then: the client changed it; as sent
            latest = entry.latest
            if sent != ([] if latest is None else [latest]):
                rewritten = cookieheader.rewrite(rewritten, name, latest)
                state.stale[name] = entry
        if rewritten is not header:
            cookieheader.replace(request, rewritten)

    def finish(
        self, admission: Admission, headers: list[tuple[str, str]], *, public: bool = False
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
        for field, value in headers:
            if field.lower() != "set-cookie":
                continue
            name = value.partition("=")[0].strip()
            if name in self.names:
                issued[name] = parse_set_cookie(value)  # the last one wins, as in browsers
        now = self._clock()
        record = state.record
        generation = record.generation if record is not None else state.generation
        if issued:
            record = self._record(admission, state, issued, now)
            generation = record.generation
        if public:
            return headers
        for name, entry in state.stale.items():
            if name not in issued:
                headers = [*headers, ("Set-Cookie", entry.resend(now))]
        if notes is not None and notes.get(_ROTATE) is not None:
            self._rotate(admission, state, record, now)
        elif generation != state.generation:  # the browser learns which jar state it now has
            admission.set_identity = self._identity.issue(state.request, state.identity, generation)
        return headers

    # -- records -------------------------------------------------------------------------

    def _record(
        self, admission: Admission, state: _State, issued: dict[str, SetCookie | None], now: float
    ) -> _Record:
        """Store what the app issued; the record's generation grows when a value changes."""
        # A record lost meanwhile (expired) restarts from the browser's generation, and
        # cannot say what the browser held before: incomplete.
        # A generation the client claims is trusted only to restart a lost record.
        record = state.record or _Record(min(state.generation, _MAX_GENERATION), {})
        start = state.record is None and state.generation == 0
        generation = record.generation + 1
        changed = False
        # Whether the stored record says the same, but for the times (see _still_current).
        current = state.record is not None
        for name, cookie in issued.items():
            entry = record.entries.get(name)
            if cookie is None:
                # Unsafe to keep or re-send: forget, so requests see what the browser sends.
                logger.warning(
                    "session %s: a tracked Set-Cookie was malformed or oversized; not tracked",
                    admission.key[:12],
                    extra={"sessionlock_key": admission.key[:12]},
                )
                forgotten = record.entries.pop(name, None) is not None
                changed |= forgotten
                current &= not forgotten
                continue
            lifetime = cookie.lifetime(now)
            deleted = lifetime is not None and lifetime <= 0
            ttl = self.max_ttl if lifetime is None or deleted else min(lifetime, self.max_ttl)
            if state.fresh:  # a visitor who may never come back: its next write keeps it longer
                ttl = min(ttl, NEW_BROWSER_TTL)
            fingerprint = None if deleted else state.seal.fingerprint(cookie.value)
            host = _request_host(state.request)
            current &= entry is not None and _still_current(entry, cookie, host, now, ttl)
            if entry is None:
                lineage: list[tuple[int, str | None]] = []
                entry = _Entry(cookie, now, host, lineage, start or state.record is not None, 0)
                record.entries[name] = entry
            if not entry.lineage or entry.lineage[-1][1] != fingerprint:
                entry.lineage.append((generation, fingerprint))
                changed = True
                if len(entry.lineage) > _LINEAGE:
                    del entry.lineage[0]
                    entry.complete = False
            entry.cookie, entry.issued, entry.host, entry.until = cookie, now, host, now + ttl
        if changed:
            record.generation = generation
        if not current:  # an unchanged record is not rewritten: the cookie is re-issued as is
            self._store(state.seal, record, now)
        return record

    def _rotate(
        self, admission: Admission, state: _State, record: _Record | None, now: float
    ) -> None:
        """Move the record to a new identity, given to this response only, and forget the old.

        Whoever else knew the old identity (one planted in the browser before a login) is
        left with a lineage that has no record: it can never be handed this session.
        """
        identity = new_identity()
        seal = _Seal(self._secret, identity, self.names, clear=self._clear)
        entries = {}
        for name, entry in (record.entries if record is not None else {}).items():
            current = None if entry.deleted else seal.fingerprint(entry.cookie.value)
            lineage = [(1, current)]
            entries[name] = _Entry(
                entry.cookie, entry.issued, entry.host, lineage, False, entry.until
            )
        if entries:
            self._store(seal, _Record(1, entries), now)
        try:
            self.backend.delete(state.seal.store_key)
        except BackendUnavailable as error:
            self._failed("forget", error)
        admission.set_identity = self._identity.issue(state.request, identity, 1 if entries else 0)

    def _store(self, seal: _Seal, record: _Record, now: float) -> None:
        live = {name: e for name, e in record.entries.items() if e.until > now}
        try:
            if not live:
                self.backend.delete(seal.store_key)
                return
            ttl = max(e.until for e in live.values()) - now
            data = {"v": 2, "g": record.generation, "e": {n: e.dump() for n, e in live.items()}}
            plain = json.dumps(data, separators=(",", ":")).encode("ascii")
            self.backend.set(seal.store_key, seal.seal(plain), ttl)
        except BackendUnavailable as error:
            # The response goes out as the app made it: this write is just not tracked (a
            # later replay is served as without the middleware). Never a 500 after the app ran.
            self._failed("record", error)
        else:
            self._failing = False

    def _load(self, seal: _Seal) -> _Record | None:
        try:
            text = self.backend.get(seal.store_key)
        except BackendUnavailable as error:
            self._failed("read", error)
            return None
        if text is None:
            return None
        plain = seal.open(text)
        if plain is None:
            return None
        try:
            data = json.loads(plain)
            if data["v"] != 2:
                return None
            generation = int(data["g"])
            raw = dict(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        now = self._clock()
        entries = {}
        for name, item in raw.items():
            entry = _Entry.load(item)
            if entry is not None and name in self.names and entry.until > now:
                entries[name] = entry
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


def _still_current(entry: _Entry, cookie: SetCookie, host: str, now: float, ttl: float) -> bool:
    """Whether ``entry``, as stored, may stand for ``cookie`` issued again now for ``ttl``.

    The same header (value and attributes) from the same host, and a stored expiry that
    still covers half of ``ttl``: then only ``issued`` and ``until`` would move, and the
    record is not rewritten (a long-lived session's is still extended now and then). A value
    that changed (Flask and Starlette sign a timestamp into theirs) is always written.

    The one trace of the older ``issued``: :meth:`_Entry.resend` shortens Max-Age from it. A
    stale request is resent the cookie only if it left before its browser got the value
    (issued at the ``issued`` stored), and it is answered after this re-issue: its Max-Age is
    short by about its own time in flight at most, as a resend is short of it anyway.
    """
    return (
        cookie.header == entry.cookie.header
        and host == entry.host
        and (entry.until - now >= ttl / 2)
    )


def _cookie_value(set_cookie: str | None) -> str | None:
    """The raw identity in a freshly issued identity Set-Cookie (``name=<id>.<gen>.<tag>``)."""
    if set_cookie is None:
        return None
    value = set_cookie.partition("=")[2].partition(".")[0].strip()
    return value or None
