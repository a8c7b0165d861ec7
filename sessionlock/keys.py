"""Where a request's session key comes from, and how it is hashed before any use.

    from sessionlock import keys
    from sessionlock.wsgi import SessionLockMiddleware

    app = SessionLockMiddleware(app, key=keys.cookie("sessionid"))   # Django's session cookie
    app = SessionLockMiddleware(app, key="header:X-Session-Token")   # the same, as a string
    app = SessionLockMiddleware(app)                                 # keys.identity(), default

A key source is any callable of the WSGI environ or the ASGI scope that returns the key, or
None for "not a session request: pass it through". The built-in sources read both.

Keys are credentials. They are turned into a keyed BLAKE2b digest at once, and only that
digest reaches a backend (file names, Redis keys) or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import TypeAlias

from . import cookieheader
from ._types import Request
from .errors import ConfigurationError

__all__ = [
    "Identity",
    "KeySource",
    "cookie",
    "from_spec",
    "hash_key",
    "header",
    "identity",
    "new_identity",
    "read_cookie",
    "read_header",
    "request_scheme",
]

KeySource: TypeAlias = Callable[[Request], "str | None"]

_PERSON = b"sessionlock.idv"  # domain separation of the identity MAC
_VERIFIED = 4096  # identity cookie values remembered as verified, per Identity
_CUTS, _CACHED_HEADER = 1024, 1024  # Cookie headers remembered cut, at most 1 KiB each
_MAX_AGE = 400 * 24 * 3600  # browsers cap cookie lifetimes at 400 days
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: header/cookie names


def read_header(request: Request, name: str) -> str | None:
    """A request header from an environ or a scope (repeated headers joined by ', ')."""
    if "REQUEST_METHOD" in request:  # WSGI environ
        value = request.get("HTTP_" + name.upper().replace("-", "_"))
        return value if isinstance(value, str) else None
    wanted = name.lower().encode("latin-1")
    found = [v for k, v in request.get("headers", ()) if k.lower() == wanted]
    if not found:
        return None
    return ", ".join(v.decode("latin-1") for v in found)


def read_cookie(request: Request, name: str) -> str | None:
    """The first cookie called ``name`` the app sees, leniently parsed (malformed pairs skipped)."""
    return cookieheader.read(cookieheader.get(request), name)


def request_scheme(request: Request) -> str:
    """The request's URL scheme (``http`` when the environ or scope does not say)."""
    scheme = (
        request.get("wsgi.url_scheme") if "REQUEST_METHOD" in request else request.get("scheme")
    )
    return scheme if isinstance(scheme, str) else "http"


def cookie(name: str) -> KeySource:
    """The session key is the value of cookie ``name`` (e.g. Django's ``sessionid``)."""
    _check_token(name, "cookie name")

    def key_from_cookie(request: Request) -> str | None:
        return read_cookie(request, name)

    key_from_cookie.__qualname__ = f"cookie({name!r})"
    return key_from_cookie


def header(name: str) -> KeySource:
    """The session key is the value of request header ``name`` (e.g. a bearer token)."""
    _check_token(name, "header name")

    def key_from_header(request: Request) -> str | None:
        value = read_header(request, name)
        return value.strip() or None if value is not None else None

    key_from_header.__qualname__ = f"header({name!r})"
    return key_from_header


class Identity:
    """The middleware's own stable random cookie, issued when absent: the default key.

    A session cookie that changes on every write (Flask's and Starlette's signed cookies)
    cannot name a lock; this one never changes. It holds 256 random bits from
    :mod:`secrets`, is HttpOnly, SameSite=Lax, Path=/, and on https Secure with the
    ``__Host-`` prefix, so a sibling subdomain cannot plant one.

    Its value is ``<identity>.<generation>.<tag>``: the tag is a keyed BLAKE2b MAC (96 bits)
    under the middleware's secret, so only identities the server issued are accepted; any
    other value (invented, truncated, a generation changed) is replaced by a fresh identity,
    never adopted. The generation is re-issued with every tracked session cookie: a browser
    updates both from one response, so a request's generation tells which state of its jar it
    was sent with (see :mod:`sessionlock.cookies`). The lock key is the identity alone. The
    app never sees this cookie: the middleware removes it from the header the app receives.

    ``secret`` is the MAC key; the middleware binds its own (:meth:`bind`), shared by every
    worker of a backend. Without one, each instance makes a random key of its own.
    """

    _VALUE = re.compile(r"([A-Za-z0-9_-]{43})\.(0|[1-9][0-9]{0,12})\.([A-Za-z0-9_-]{16})")

    def __init__(
        self,
        name: str = "sessionlock",
        *,
        max_age: int = _MAX_AGE,
        secure: bool | None = None,
        secret: bytes | None = None,
    ) -> None:
        _check_token(name, "identity cookie name")
        if max_age <= 0:
            raise ConfigurationError("identity max_age must be a positive number of seconds")
        self.name = name
        self.max_age = max_age
        self.secure = secure
        attributes = f"; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
        # (cookie name, Set-Cookie attributes) for plain and secure requests, made once.
        self._plain = (name, attributes)
        self._secured = (f"__Host-{name}", f"{attributes}; Secure")
        self.names = (name, self._secured[0])
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, int]] = {}
        # A returning browser sends the same Cookie header again and again: its cut is kept.
        self._cuts: tuple[_Cuts, _Cuts] = ({}, {})  # by form: plain, https

    def bind(self, secret: bytes) -> Identity:
        """The same identity cookie, verified and signed with ``secret``."""
        return Identity(self.name, max_age=self.max_age, secure=self.secure, secret=secret)

    def __call__(self, request: Request) -> str | None:
        """The identity the request carries, or None when absent or malformed."""
        found = self._parse(request)
        return found[0] if found is not None else None

    def resolve(self, request: Request) -> tuple[str, str | None]:
        """The request's identity, and a Set-Cookie value when a new one was issued."""
        found = self._parse(request)
        if found is not None:
            return found[0], None
        value = new_identity()
        return value, self.issue(request, value)

    def generation(self, request: Request) -> int:
        """The jar generation the request carries (0: none, or a brand-new identity)."""
        found = self._parse(request)
        return found[1] if found is not None else 0

    def issue(self, request: Request, identity: str, generation: int = 0) -> str:
        """The Set-Cookie value that gives the browser ``identity`` at ``generation``."""
        return self.issue_for(self._secure(request), identity, generation)

    def issue_for(self, secure: bool, identity: str, generation: int = 0) -> str:
        """:meth:`issue` for a request known to be https (``secure``) or not."""
        name, attributes = self._secured if secure else self._plain
        body = f"{identity}.{generation}"
        value = f"{body}.{self._tag(body)}"
        # Known valid: the browser's next request (a tracked session's re-issue on every
        # write) is then verified by a dict lookup, not a second MAC.
        self._remember(value, (identity, generation))
        return f"{name}={value}{attributes}"

    def _tag(self, body: str) -> str:
        digest = hashlib.blake2b(
            f"{self.name}\0{body}".encode(), key=self._secret, digest_size=12, person=_PERSON
        ).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii")

    def take(self, request: Request) -> tuple[str, str | None, bool, int]:
        """Admission's one pass: (identity, Set-Cookie if a new one was issued, https form,
        the jar generation the request carries: 0 for a new identity).

        Reads this cookie from the header and removes it from what the app will see (the
        original stays under ``sessionlock.original_cookie``; an inner layer reads it there).
        """
        secure = self.secure if self.secure is not None else request_scheme(request) == "https"
        name = self._secured[0] if secure else self.name
        header = cookieheader.get(request)
        value = found = None
        if header is not None and self.name in header:
            cuts = self._cuts[secure]
            cut = cuts.get(header)
            if cut is None:
                value, stripped = _cut(header, self.names, name)
                found = self._verify(value) if value is not None else None
                cut = (value, found, stripped, cookieheader.Redacted(header))
                if len(header) <= _CACHED_HEADER:
                    if len(cuts) >= _CUTS:
                        cuts.clear()
                    cuts[header] = cut
            value, found, stripped, original = cut
            if stripped != header:
                cookieheader.replace(request, stripped, original=original)
        if value is None and cookieheader.ORIGINAL in request:  # another layer removed it
            value = cookieheader.read(cookieheader.original(request), name)
            found = self._verify(value) if value is not None else None
        if found is not None:
            return found[0], None, secure, found[1]
        identity = new_identity()
        return identity, self.issue_for(secure, identity), secure, 0

    def _parse(self, request: Request) -> tuple[str, int] | None:
        header = cookieheader.original(request)
        value = cookieheader.read(header, self._form(request)[0])
        return self._verify(value) if value is not None else None

    def _verify(self, value: str) -> tuple[str, int] | None:
        """(identity, generation) of a value this server issued, else None.

        Verified values are remembered (at most 4096, each under 80 characters): a returning
        browser's cookie costs a dict lookup, not a MAC.
        """
        known = self._verified.get(value)
        if known is not None:
            return known
        match = self._VALUE.fullmatch(value)
        if match is None:
            return None
        identity, generation, tag = match.groups()
        if not hmac.compare_digest(tag, self._tag(f"{identity}.{generation}")):
            return None  # never issued by this server: replaced, not adopted
        found = (identity, int(generation))
        self._remember(value, found)
        return found

    def _remember(self, value: str, found: tuple[str, int]) -> None:
        if len(self._verified) >= _VERIFIED:
            self._verified.clear()
        self._verified[value] = found

    def _form(self, request: Request) -> tuple[str, str]:
        return self._secured if self._secure(request) else self._plain

    def _secure(self, request: Request) -> bool:
        return self.secure if self.secure is not None else request_scheme(request) == "https"

    def __repr__(self) -> str:
        return f"identity({self.name!r})"


# Header -> (our cookie's value, its (identity, generation) if this server issued it, the
# header without it, the header as sent, kept redacted).
_Cuts: TypeAlias = dict[
    str, tuple[str | None, tuple[str, int] | None, str | None, cookieheader.Redacted]
]


def _cut(header: str, names: tuple[str, ...], wanted: str) -> tuple[str | None, str | None]:
    """(the value of ``wanted``, ``header`` without any pair of ``names``): string search,
    not a split of every pair, since this runs on every request of a returning browser."""
    value = None
    for name in names:
        key = name + "="
        start = header.find(key)
        while start != -1:
            if start and header[start - 1] not in "; ":  # inside another name: not ours
                start = header.find(key, start + 1)
                continue
            end = header.find(";", start)
            if name == wanted and value is None:
                value = header[start + len(key) : len(header) if end == -1 else end].strip()
            before = header[:start].rstrip("; ")
            after = header[end + 1 :].lstrip(" ") if end != -1 else ""
            header = f"{before}; {after}" if before and after else before or after
            start = header.find(key, len(before))
    return value, header or None


def new_identity() -> str:
    """A fresh identity: 256 random bits, 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def identity(
    name: str = "sessionlock", *, max_age: int = _MAX_AGE, secure: bool | None = None
) -> Identity:
    """The middleware's own identity cookie (see :class:`Identity`); the default key."""
    return Identity(name, max_age=max_age, secure=secure)


def from_spec(spec: str | KeySource) -> KeySource:
    """A key source from ``"cookie:NAME"``, ``"header:NAME"``, ``"identity[:NAME]"`` or a callable.

    The string forms exist for places that take literals only: gunicorn's factory syntax,
    environment variables, Django settings.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ConfigurationError(f"key must be a string spec or a callable, got {spec!r}")
    kind, _, name = spec.partition(":")
    if kind == "cookie" and name:
        return cookie(name)
    if kind == "header" and name:
        return header(name)
    if kind == "identity":
        return identity(name) if name else identity()
    raise ConfigurationError(
        f"key spec {spec!r} is not 'cookie:NAME', 'header:NAME', 'identity' or 'identity:NAME'"
    )


def derive_secret(secret: str | bytes) -> bytes:
    """A BLAKE2b key (at most 64 bytes) from a secret of any length."""
    if not isinstance(secret, (str, bytes, bytearray)):  # bytes(100) would be 100 zero bytes
        raise ConfigurationError(f"secret must be a str or bytes, got {type(secret).__name__}")
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < 16:
        raise ConfigurationError("secret must be at least 16 bytes long")
    return raw if len(raw) <= 64 else hashlib.blake2b(raw).digest()


def hash_key(secret: bytes, key: str) -> str:
    """The keyed hash that stands for ``key`` everywhere outside the request (128 bits, hex)."""
    data = key.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, key=secret, digest_size=16).hexdigest()


def _check_token(name: str, what: str) -> None:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ConfigurationError(f"{what} {name!r} is not a valid HTTP token")
