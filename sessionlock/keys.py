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

import hashlib
import re
import secrets
from collections.abc import Callable
from typing import TypeAlias

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
    "read_cookie",
    "read_header",
]

KeySource: TypeAlias = Callable[[Request], "str | None"]

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


def _cookie_header(request: Request) -> str | None:
    if "REQUEST_METHOD" in request:
        value = request.get("HTTP_COOKIE")
        return value if isinstance(value, str) else None
    # HTTP/2 may split cookies over several headers; they join with "; ".
    header = None
    for name, value in request.get("headers", ()):
        if name == b"cookie":
            text = value.decode("latin-1")
            header = text if header is None else f"{header}; {text}"
    return header


def read_cookie(request: Request, name: str) -> str | None:
    """The first cookie called ``name``, leniently parsed: a malformed pair is skipped."""
    header = _cookie_header(request)
    if not header or name not in header:
        return None
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def _scheme(request: Request) -> str:
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
    """

    _VALUE = re.compile(r"[A-Za-z0-9_-]{43}")

    def __init__(
        self,
        name: str = "sessionlock",
        *,
        max_age: int = _MAX_AGE,
        secure: bool | None = None,
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

    def __call__(self, request: Request) -> str | None:
        """The identity the request carries, or None when absent or malformed."""
        value = read_cookie(request, self._form(request)[0])
        return value if value is not None and self._VALUE.fullmatch(value) else None

    def resolve(self, request: Request) -> tuple[str, str | None]:
        """The request's identity, and a Set-Cookie value when a new one was issued."""
        name, attributes = self._form(request)
        value = read_cookie(request, name)
        if value is not None and self._VALUE.fullmatch(value):
            return value, None
        value = secrets.token_urlsafe(32)
        return value, f"{name}={value}{attributes}"

    def _form(self, request: Request) -> tuple[str, str]:
        return self._secured if self._secure(request) else self._plain

    def _secure(self, request: Request) -> bool:
        return self.secure if self.secure is not None else _scheme(request) == "https"

    def __repr__(self) -> str:
        return f"identity({self.name!r})"


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
