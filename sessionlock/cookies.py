"""Cookie sessions: every request of a browser sees the latest session cookie issued to it.

    from sessionlock.wsgi import SessionLockMiddleware

    app.wsgi_app = SessionLockMiddleware(app.wsgi_app, cookie_session="session")   # Flask

Flask's and Starlette's default sessions live in a signed cookie. Two concurrent requests
carry the same old cookie, so even serialized, the second starts from the old state and its
Set-Cookie erases the first one's change. Under the session's lease this module

- records every Set-Cookie of the tracked name(s) the app issues (value and attributes,
  deletion included) in the backend, for as long as the cookie lives (capped: ``max_ttl``);
- hands the app that latest cookie when the request carries another value (the request's
  ``Cookie`` header is rewritten; a deleted cookie is removed from it), keeping the
  original header under ``sessionlock.original_cookie`` in the environ or scope;
- re-sends the latest Set-Cookie when the app did not set one, so the browser converges.

The lock key must be the middleware's identity cookie (:func:`sessionlock.keys.identity`,
the default): it stays the same while the session cookie changes, and it is what a stored
cookie is bound to. A request presenting no identity gets a fresh one and so can never be
handed anyone's cookie. Stored records are sealed (encrypted and authenticated) with a key
derived from the raw identity, which itself is never stored: the backend holds no usable
credential, and a record cannot be moved to another identity or cookie name.

Requests exempted from the lock (``exempt=``) are not tracked: never exempt a route that
writes the session, or the next request is handed the older recorded cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from ._types import Request
from .backends.base import Backend
from .errors import ConfigurationError
from .keys import Identity

if TYPE_CHECKING:
    from .core import Admission

__all__ = [
    "DEFAULT_MAX_TTL",
    "SessionCookies",
    "SetCookie",
    "parse_set_cookie",
    "request_cookie_header",
    "rewrite_cookie_header",
    "set_request_cookie_header",
]

logger = logging.getLogger("sessionlock")

#: Longest a record is kept (seconds). Staleness comes from requests in flight and pages
#: left open, so a day of protection against replays is plenty; a record that expired only
#: means an older replay is served as without the middleware. Session cookies (no Max-Age or
#: Expires) and deletions are kept this long; cookies with a lifetime, at most this long.
DEFAULT_MAX_TTL = 24 * 3600.0

_NOTE = "cookies"
_ORIGINAL = "sessionlock.original_cookie"
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


# -- the request's Cookie header ---------------------------------------------------------------


def request_cookie_header(request: Request) -> str | None:
    """The request's Cookie header (ASGI: several ``cookie`` headers joined by "; ")."""
    if "REQUEST_METHOD" in request:
        value = request.get("HTTP_COOKIE")
        return value if isinstance(value, str) else None
    found = [v for k, v in request.get("headers", ()) if k.lower() == b"cookie"]
    return "; ".join(v.decode("latin-1") for v in found) if found else None


def set_request_cookie_header(request: Request, header: str | None) -> None:
    """Replace the request's Cookie header; the scope's header list is replaced, not edited.

    The original is kept under ``sessionlock.original_cookie`` (first rewrite only).
    """
    request.setdefault(_ORIGINAL, request_cookie_header(request))
    if "REQUEST_METHOD" in request:
        if header is None:
            request.pop("HTTP_COOKIE", None)
        else:
            request["HTTP_COOKIE"] = header
        return
    headers = [(k, v) for k, v in request.get("headers", ()) if k.lower() != b"cookie"]
    if header is not None:
        headers.append((b"cookie", header.encode("latin-1")))
    request["headers"] = headers


def cookie_values(header: str | None, name: str) -> list[str]:
    """Every value the Cookie header carries for ``name``, as sent (quotes kept)."""
    if not header or name not in header:
        return []
    values = []
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip())
    return values


def rewrite_cookie_header(header: str | None, name: str, value: str | None) -> str | None:
    """``header`` with every ``name`` pair replaced by one ``name=value`` (None: removed).

    The other pairs keep their text and order; the new pair takes the first old one's place.
    """
    pairs = [p.strip() for p in header.split(";")] if header else []
    kept: list[str] = []
    placed = value is None
    for pair in pairs:
        if not pair:
            continue
        key, sep, _ = pair.partition("=")
        if sep and key.strip() == name:
            if not placed:
                kept.append(f"{name}={value}")
                placed = True
            continue
        kept.append(pair)
    if not placed:
        kept.append(f"{name}={value}")
    return "; ".join(kept) or None


def _request_path(request: Request) -> str:
    if "REQUEST_METHOD" in request:
        return str(request.get("SCRIPT_NAME", "")) + str(request.get("PATH_INFO", "")) or "/"
    return str(request.get("root_path", "")) + str(request.get("path", "")) or "/"


# -- sealed records --------------------------------------------------------------------------


class _Seal:
    """Encrypt-then-MAC with keyed BLAKE2b (a PRF): counter-mode keystream, 128-bit tag.

    Standard library only. Keys come from the backend-wide secret and the raw identity,
    which is never stored, so a reader of the backend cannot open or forge a record.
    """

    __slots__ = ("_enc", "_mac", "store_key")

    def __init__(self, secret: bytes, identity: str, name: str) -> None:
        material = hashlib.blake2b(
            name.encode() + b"\0" + identity.encode("utf-8", "surrogatepass"),
            key=secret,
            person=b"sessionlock.ck",
        ).digest()
        self._enc, self._mac = material[:32], material[32:]
        # Hex, like every key a backend sees; unrelated to the lock key of the identity.
        digest = hashlib.blake2b(material, digest_size=16, person=b"sessionlock.ckid")
        self.store_key = digest.hexdigest()

    def _stream(self, nonce: bytes, size: int) -> bytes:
        blocks = (
            hashlib.blake2b(nonce + i.to_bytes(8, "big"), key=self._enc).digest()
            for i in range((size + 63) // 64)
        )
        return b"".join(blocks)[:size]

    def _tag(self, nonce: bytes, sealed: bytes) -> bytes:
        return hashlib.blake2b(nonce + sealed, key=self._mac, digest_size=16).digest()

    def seal(self, plain: bytes) -> str:
        nonce = secrets.token_bytes(16)
        stream = self._stream(nonce, len(plain))
        sealed = (int.from_bytes(plain, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            len(plain), "big"
        )
        return base64.urlsafe_b64encode(nonce + sealed + self._tag(nonce, sealed)).decode()

    def open(self, text: str) -> bytes | None:
        try:
            raw = base64.urlsafe_b64decode(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) < 32:
            return None
        nonce, sealed, tag = raw[:16], raw[16:-16], raw[-16:]
        if not hmac.compare_digest(tag, self._tag(nonce, sealed)):
            return None
        stream = self._stream(nonce, len(sealed))
        return (int.from_bytes(sealed, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            len(sealed), "big"
        )


class _Record:
    """The latest Set-Cookie of one name for one identity, and when it was issued."""

    __slots__ = ("cookie", "deleted", "issued")

    def __init__(self, cookie: SetCookie, issued: float, deleted: bool) -> None:
        self.cookie = cookie
        self.issued = issued
        self.deleted = deleted

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


class _State:
    """One request's cookie tracking: its seals, and the names the browser is stale on."""

    __slots__ = ("seals", "stale")

    def __init__(self, seals: dict[str, _Seal]) -> None:
        self.seals = seals
        self.stale: dict[str, _Record] = {}


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
        if {key.name, f"__Host-{key.name}"} & set(names):
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

    def prepare(self, admission: Admission, request: Request) -> None:
        """Hand the app the latest cookie issued to this identity, if the browser is behind."""
        fresh = admission.set_identity is not None
        identity = _cookie_value(admission.set_identity) if fresh else self._identity(request)
        if identity is None:  # cannot happen with Identity; never guess one
            return
        state = _State({name: _Seal(self._secret, identity, name) for name in self.names})
        if admission.notes is None:
            admission.notes = {}
        admission.notes[_NOTE] = state
        if fresh:  # a brand-new identity has nothing stored, by construction
            return
        header = request_cookie_header(request)
        for name, seal in state.seals.items():
            record = self._load(seal)
            if record is None or not record.cookie.path_matches(_request_path(request)):
                continue
            latest = None if record.deleted else record.cookie.value
            if cookie_values(header, name) != ([] if latest is None else [latest]):
                header = rewrite_cookie_header(header, name, latest)
                set_request_cookie_header(request, header)
                state.stale[name] = record

    def finish(self, admission: Admission, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Record the app's Set-Cookie for tracked names; re-send the latest if it set none."""
        notes = admission.notes
        state = notes.get(_NOTE) if notes is not None else None
        if not isinstance(state, _State):
            return headers
        issued: dict[str, SetCookie | None] = {}
        for field, value in headers:
            if field.lower() != "set-cookie":
                continue
            name = value.partition("=")[0].strip()
            if name in state.seals:
                issued[name] = parse_set_cookie(value)  # the last one wins, as in browsers
        now = self._clock()
        for name, seal in state.seals.items():
            if name in issued:
                self._store(admission, seal, issued[name], now)
            elif name in state.stale:
                headers = [*headers, ("Set-Cookie", state.stale[name].resend(now))]
        return headers

    # -- records -------------------------------------------------------------------------

    def _store(
        self, admission: Admission, seal: _Seal, cookie: SetCookie | None, now: float
    ) -> None:
        if cookie is None:
            # Unsafe to keep or re-send: forget, so requests see what the browser sends.
            logger.warning(
                "session %s: a tracked Set-Cookie was malformed or oversized; not tracked",
                admission.key[:12],
                extra={"sessionlock_key": admission.key[:12]},
            )
            self.backend.delete(seal.store_key)
            return
        lifetime = cookie.lifetime(now)
        deleted = lifetime is not None and lifetime <= 0
        ttl = self.max_ttl if lifetime is None or deleted else min(lifetime, self.max_ttl)
        plain = f"1\n{now:.3f}\n{cookie.header}".encode("ascii")
        self.backend.set(seal.store_key, seal.seal(plain), ttl)

    def _load(self, seal: _Seal) -> _Record | None:
        text = self.backend.get(seal.store_key)
        if text is None:
            return None
        plain = seal.open(text)
        if plain is None:
            return None
        try:
            version, issued, header = plain.decode("ascii").split("\n", 2)
            cookie = parse_set_cookie(header)
            when = float(issued)
        except (UnicodeDecodeError, ValueError):
            return None
        if version != "1" or cookie is None:
            return None
        lifetime = cookie.lifetime(when)
        return _Record(cookie, when, deleted=lifetime is not None and lifetime <= 0)


def _cookie_value(set_cookie: str | None) -> str | None:
    if set_cookie is None:
        return None
    value = set_cookie.partition("=")[2].partition(";")[0].strip()
    return value or None
