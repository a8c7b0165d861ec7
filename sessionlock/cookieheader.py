"""The request's ``Cookie`` header, read and rewritten alike in a WSGI environ and an ASGI scope.

    from sessionlock import cookieheader
    cookieheader.get(environ)                                   # "a=1; session=old"
    cookieheader.replace(environ, "a=1; session=new")           # the app now sees this
    environ["sessionlock.original_cookie"]                      # "a=1; session=old"

The middleware rewrites the header the app receives in two cases: it removes its own
identity cookie (the app never set it, so it never sees it) and, for cookie sessions, it
hands the app the latest session cookie. The header as the client sent it stays under
``sessionlock.original_cookie`` (like Werkzeug's ``werkzeug.proxy_fix.orig``), which is
also where an inner sessionlock layer reads its key from.
"""

from __future__ import annotations

from ._types import Request

__all__ = ["ORIGINAL", "Redacted", "get", "original", "read", "replace", "rewrite", "values"]

ORIGINAL = "sessionlock.original_cookie"


class Redacted(str):
    """The original Cookie header: a str, whose repr hides it from debug pages that print
    the environ (Django's and Werkzeug's filter ``HTTP_COOKIE``, not our key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<cookie header: redacted>'"


def get(request: Request) -> str | None:
    """The Cookie header as the app will see it (ASGI: several headers joined by "; ")."""
    if "REQUEST_METHOD" in request:
        value = request.get("HTTP_COOKIE")
        return value if isinstance(value, str) else None
    header = None
    for name, value in request.get("headers", ()):
        # Servers send it lower-cased; another case is rare: no lower-cased copy of every name.
        if name == b"cookie" or (len(name) == 6 and name.lower() == b"cookie"):
            text = value.decode("latin-1")
            header = text if header is None else f"{header}; {text}"
    return header


def original(request: Request) -> str | None:
    """The Cookie header as the client sent it, before any rewrite by a sessionlock layer."""
    if ORIGINAL in request:
        kept = request[ORIGINAL]
        return kept if isinstance(kept, str) else None
    return get(request)


def replace(request: Request, header: str | None, *, original: str | None = None) -> None:
    """Set the header the app sees (None: none); the first rewrite keeps the original.

    ``original``: the current header, when the caller has read it already (a Redacted one is
    kept as it is). A scope's header list is replaced, never edited in place: it may be shared.
    """
    if ORIGINAL not in request:
        sent = original if original is not None else get(request)
        request[ORIGINAL] = sent if sent is None or type(sent) is Redacted else Redacted(sent)
    if "REQUEST_METHOD" in request:
        if header is None:
            request.pop("HTTP_COOKIE", None)
        else:
            request["HTTP_COOKIE"] = header
        return
    kept = request.get("headers", ())
    headers = [(k, v) for k, v in kept if len(k) != 6 or k.lower() != b"cookie"]
    if header is not None:
        headers.append((b"cookie", header.encode("latin-1")))
    request["headers"] = headers


def read(header: str | None, name: str) -> str | None:
    """The first value of cookie ``name``, leniently parsed (quotes removed), or None."""
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


def values(header: str | None, name: str) -> list[str]:
    """Every value the header carries for ``name``, as sent (quotes kept)."""
    if not header or name not in header:
        return []
    found = []
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            found.append(value.strip())
    return found


def rewrite(header: str | None, name: str, value: str | None) -> str | None:
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
