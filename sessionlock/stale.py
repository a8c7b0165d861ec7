"""Stale pages: a form from a page the session has moved on from is caught, not acted on.

The lock serializes requests; it cannot help one that is *late*. The back button, or a tab
left open, submits a form rendered from a session that has changed since: an answer lands on
question 5 while the page showed question 3. So the middleware keeps a *revision* per
session, under the lease, that grows each time a request changes the session, and a page
embeds the revision it was rendered from (:func:`hidden_field` in a form, or the
``Session-Revision`` request header from fetch/XHR, copied from the response header of the
same name). A state-changing request that carries an older one is *stale*: answered 409,
redirected, or flagged for the app, as :class:`StalePages` says, per app and per path.

A page is rendered before its own request's changes are saved, so a token names both the
revision its request began with and that request (a random nonce): a submit is fresh if
nothing changed the session since, or if the only change was the rendering request's own.
A request that carries no token is never stale: pages that embed none are unaffected.

What "changed" means: the request set a tracked session cookie (``cookie_session``) whose
payload differs from the one it came with (a re-signed cookie with a new timestamp only is
no change), or an adapter (Flask's ``session.modified``, Django's ``request.session.modified``)
or the app (:func:`session_changed`) said so.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote_plus

from . import cookieheader
from ._types import Request
from .cookies import parse_set_cookie
from .errors import BackendUnavailable, ConfigurationError

if TYPE_CHECKING:
    from .backends.base import Backend
    from .core import Admission

__all__ = [
    "FIELD",
    "HEADER",
    "StalePages",
    "hidden_field",
    "is_stale",
    "page_token",
    "session_changed",
]

logger = logging.getLogger("sessionlock")

#: The form field and query parameter that carry a page's token.
FIELD = "session_revision"
#: The request header that carries a token (fetch/XHR), and the response header that gives
#: the revision after the request.
HEADER = "Session-Revision"
#: In the environ/scope: the revision the request began with; and whether it is stale.
REVISION_KEY = "sessionlock.revision"
STALE_KEY = "sessionlock.stale"
#: The cookie whose change makes browsers drop pages of an older revision from their
#: back-forward cache (see :meth:`Revisions._eviction`).
EVICTION_COOKIE = "sessionlock_rev"
#: Body bytes looked at for the field: a form's hidden field comes before its file inputs.
PEEK = 65_536

Policy = Literal["refuse", "redirect", "flag"]
_POLICIES = ("refuse", "redirect", "flag")
_TOKEN = re.compile(r"(\d{1,18})(?:\.([0-9a-f]{12}))?")
_URLENCODED_FIELD = re.compile(rb"(?:^|&)" + FIELD.encode() + rb"=([^&]{0,64})")
_MULTIPART_FIELD = re.compile(
    rb'name="' + FIELD.encode() + rb'"\r\n(?:[^\r\n]{1,200}\r\n){0,4}\r\n([^\r\n]{0,64})\r\n'
)
_STORED = re.compile(r"(\d{1,18}) ([0-9a-f]{12}|-)")
_SUFFIX = "-revision"
_REFUSED_BODY = (
    "This page is out of date: the session has changed since it was shown, so this request "
    "was not carried out. Reload the page and try again.\n"
)


class StalePages:
    """What to do with a state-changing request sent from a page older than its session.

    policy:      ``"refuse"`` (default): 409 and a short page, the app never runs;
                 ``"redirect"``: 303 to ``redirect_to`` (a path or URL), the app never runs;
                 ``"flag"``: the app runs and asks :func:`is_stale`.
    redirect_to: where ``"redirect"`` sends the browser.
    routes:      per path prefix, a policy for the requests under it (the longest prefix
                 wins): ``"refuse"``, ``"flag"`` or ``"redirect:<url>"``.
    methods:     the state-changing methods that are checked; other requests never are.
    no_store:    every response of a request that held its session gets
                 ``Cache-Control: no-store`` (unless the app made it public), and a response
                 that changed the session an HttpOnly ``sessionlock_rev`` cookie: browsers
                 keep no copy in their HTTP cache, and Chromium drops ``no-store`` pages from
                 its back-forward cache once a cookie changed. Going back renders the page
                 again, from the session as it is now.
    ttl:         seconds a session's revision is kept after its last change (default 31
                 days, Flask's permanent session lifetime). Past it, every older page of the
                 session is stale once.
    counter:     called ``counter(policy)`` for each stale request, as rules count repairs.
    """

    def __init__(
        self,
        *,
        policy: Policy = "refuse",
        redirect_to: str | None = None,
        routes: Mapping[str, str] | None = None,
        methods: Sequence[str] = ("POST", "PUT", "PATCH", "DELETE"),
        no_store: bool = True,
        ttl: float = 31 * 24 * 3600.0,
        counter: Callable[[str], object] | None = None,
    ) -> None:
        self.default = _policy(policy, redirect_to, "policy")
        self.routes = sorted(
            ((prefix, _route_policy(prefix, spec)) for prefix, spec in (routes or {}).items()),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
            raise ConfigurationError(f"methods must be a list of method names, got {methods!r}")
        self.methods = frozenset(method.upper() for method in methods)
        self.no_store = bool(no_store)
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl < 1e10:
            raise ConfigurationError(f"ttl must be a number of seconds > 0, got {ttl!r}")
        self.ttl = float(ttl)
        self.counter = counter

    @classmethod
    def from_text(cls, text: str) -> StalePages:
        """``"refuse"``, ``"flag"`` or ``"redirect:<url>"``: that policy, the rest default
        (the form the environment, gunicorn's factory syntax and settings may use)."""
        kind, _, target = text.strip().partition(":")
        return cls(policy=kind.lower(), redirect_to=target or None)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        kind, target = self.default
        shown = f"redirect to {target!r}" if kind == "redirect" else kind
        return f"StalePages({shown}, {len(self.routes)} route(s), no_store={self.no_store})"

    def policy_for(self, path: str) -> tuple[Policy, str | None]:
        for prefix, policy in self.routes:
            if path.startswith(prefix):
                return policy
        return self.default

    def count(self, policy: str) -> None:
        if self.counter is None:
            return
        try:
            self.counter(policy)
        except Exception as error:  # a metrics hook must not fail the request
            logger.error("sessionlock stale-page counter raised %s", type(error).__name__)


def _policy(kind: object, target: str | None, what: str) -> tuple[Policy, str | None]:
    if kind not in _POLICIES:
        raise ConfigurationError(f"{what} must be one of {', '.join(_POLICIES)}, got {kind!r}")
    if kind == "redirect":
        if not isinstance(target, str) or not target:
            raise ConfigurationError(f"{what} 'redirect' needs a URL to redirect to")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):  # never a header injection
            raise ConfigurationError(f"the redirect URL {target!r} has spaces or control bytes")
        return "redirect", target
    return kind, None  # type: ignore[return-value]


def _route_policy(prefix: object, spec: object) -> tuple[Policy, str | None]:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigurationError(f"a route of StalePages is a path prefix, got {prefix!r}")
    if not isinstance(spec, str):
        raise ConfigurationError(f"the policy for {prefix!r} must be a string, got {spec!r}")
    kind, _, target = spec.partition(":")
    return _policy(kind, target or None, f"the policy for {prefix!r}")


class Revision:
    """One request's view of its session's revision (kept in ``Admission.notes``).

    A key with no stored revision is at its *base*, a number taken from the key itself (a
    keyed hash): a page of another key (the session before a login gave it a new id) does
    not name this key's revision, as it would if every key started at 0; and nothing needs
    writing until the session changes.
    """

    __slots__ = ("before", "by", "changed", "nonce", "number", "stale")

    def __init__(self, number: int, by: str | None, before: str | None) -> None:
        self.number = number  # as the request began
        self.by = by  # the nonce of the request that made it, if it gave out tokens
        self.before = before  # the tracked cookie's payload the request came with
        self.nonce: str | None = None  # given out once a page of this request asks
        self.changed = False
        self.stale = False

    def token(self) -> str:
        if self.nonce is None:
            self.nonce = secrets.token_hex(6)
        return f"{self.number}.{self.nonce}"

    def is_fresh(self, token: str) -> bool:
        """A malformed token is not fresh: no page of ours sent it."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return False
        number, nonce = int(match.group(1)), match.group(2)
        return number == self.number or (
            nonce is not None and number + 1 == self.number and nonce == self.by
        )

    def after(self) -> int:
        return self.number + 1 if self.changed else self.number

    def stored(self) -> str:
        return f"{self.after()} {self.nonce or '-'}"


def storage_key(key: str) -> str:
    """The backend key of a session's revision: beside its lock key (a digest, never raw)."""
    return key + _SUFFIX


def base(key: str) -> int:
    """The revision of a key nothing changed yet: 40 bits of the key, a keyed hash (hex)."""
    try:
        return int(key[:10], 16)
    except ValueError:  # a key that is not hex (a custom backend's): still one per key
        return int.from_bytes(key.encode()[:5].ljust(5, b"\0"), "big")


def parse_stored(value: str | None) -> tuple[int | None, str | None]:
    """(revision, nonce of the request that made it) from a stored value; (None, None) if
    none (or not one of ours)."""
    match = _STORED.fullmatch(value) if value else None
    if match is None:
        return None, None
    by = match.group(2)
    return int(match.group(1)), None if by == "-" else by


def token_in(header: str | None, query: str, content_type: str, body: bytes | None) -> str | None:
    """The token a request carries: its header, else its query string, else its form body
    (the first :data:`PEEK` bytes of an urlencoded or multipart body)."""
    if header is not None and header.strip():  # an empty header is no token, as absent
        return header.strip()[:64]
    if FIELD in query:
        match = _URLENCODED_FIELD.search(query.encode("latin-1", "replace"))
        if match is not None:
            return unquote_plus(match.group(1).decode("latin-1"))
    if body:
        kind = content_type.partition(";")[0].strip().lower()
        pattern = (
            _URLENCODED_FIELD
            if kind == "application/x-www-form-urlencoded"
            else _MULTIPART_FIELD
            if kind == "multipart/form-data"
            else None
        )
        match = pattern.search(body) if pattern is not None else None
        if match is not None:
            return unquote_plus(match.group(1).decode("latin-1"))
    return None


def wants_body(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


def cookie_payload(value: str | None) -> str | None:
    """What a signed session cookie says, without when it was signed: itsdangerous' format
    (Flask, Starlette, Quart) is ``payload.timestamp.signature``, re-signed with a new
    timestamp on every save. Any other format is compared whole."""
    if not value:
        return None
    payload, dot, rest = value.rpartition(".")
    if dot and rest:
        head, dot2, _stamp = payload.rpartition(".")
        if dot2 and head:
            return head
    return value


def refusal_parts(policy: tuple[Policy, str | None]) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, body, headers) of a stale request's answer under ``refuse`` or ``redirect``."""
    kind, target = policy
    if kind == "redirect":
        assert target is not None
        body = f"The session has changed since this page was shown: see {target}\n"
        return 303, body, [("Location", target)]
    return 409, _REFUSED_BODY, []


class Revisions:
    """The revision bookkeeping of one middleware: read under the lease before the app
    runs, judged against the request's token, stored at the response head if it grew."""

    def __init__(self, pages: StalePages, backend: Backend, tracked: Sequence[str]) -> None:
        self.pages = pages
        self.backend = backend
        self.tracked = tuple(tracked)  # cookie names whose payload changing is a change

    def begin(self, admission: Admission, request: Request) -> None:
        """Read the session's revision (after cookie tracking handed the request its latest
        cookie: the payload it sees is the one a change is measured from)."""
        try:
            number, by = parse_stored(self.backend.get(storage_key(admission.key)))
            if number is None:
                number = base(admission.key)
        except BackendUnavailable as error:
            logger.warning(
                "session %s: revision not read (%s): not checked", admission.key[:12], error
            )
            return
        before = None
        if self.tracked:
            header = cookieheader.get(request)
            before = cookie_payload(cookieheader.read(header, self.tracked[0]))
        revision = Revision(number, by, before)
        if admission.notes is None:
            admission.notes = {}
        admission.notes["revision"] = revision
        request[REVISION_KEY] = revision.number

    def judge(
        self, admission: Admission, request: Request, token: str | None
    ) -> tuple[int, str, list[tuple[str, str]]] | None:
        """The answer to a stale request under ``refuse``/``redirect``; None: run the app."""
        revision = admission.notes.get("revision") if admission.notes else None
        if not isinstance(revision, Revision) or token is None or revision.is_fresh(token):
            return None
        revision.stale = True
        request[STALE_KEY] = True
        path = (
            request.get("PATH_INFO", "") if "REQUEST_METHOD" in request else request.get("path", "")
        )
        policy = self.pages.policy_for(str(path))
        logger.warning(
            "session %s: a stale request (page token %r, session at revision %d): %s",
            admission.key[:12],
            token[:32],  # the client's text, quoted: never a forged log line
            revision.number,
            policy[0],
            extra={"sessionlock_key": admission.key[:12], "sessionlock_stale": policy[0]},
        )
        self.pages.count(policy[0])
        if policy[0] == "flag":
            return None
        status, body, headers = refusal_parts(policy)
        return status, body, [*headers, (HEADER, str(revision.number))]  # for fetch to catch up

    def end(
        self, admission: Admission, headers: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """At the response head, under the lease: store a grown revision; the headers to add
        (``headers``: at least the response's Set-Cookie and Cache-Control ones)."""
        revision = admission.notes.get("revision") if admission.notes else None
        if not isinstance(revision, Revision):
            return []
        if not revision.changed and self.tracked:
            revision.changed = self._cookie_changed(revision, headers)
        if revision.changed and admission.shared:  # a reader writes nothing (see Core)
            logger.warning(
                "session %s: a shared request changed its session: no new revision",
                admission.key[:12],
            )
            revision.changed = False
        if revision.changed and admission.lease is not None:
            try:
                self.backend.set(storage_key(admission.key), revision.stored(), self.pages.ttl)
            except BackendUnavailable as error:
                logger.error(
                    "session %s: its revision could not be stored (%s): pages older than "
                    "this request are not caught",
                    admission.key[:12],
                    error,
                )
        added = [(HEADER, str(revision.after()))]
        if self.pages.no_store and not _public(headers):
            added.append(("Cache-Control", "no-store"))  # joined with the app's, if any
            if revision.changed:
                added.append(("Set-Cookie", self._eviction(admission, revision.after())))
        return added

    def _eviction(self, admission: Admission, number: int) -> str:
        """Chromium keeps ``no-store`` pages in its back-forward cache unless a cookie
        changed since (an HttpOnly one, measured on Chromium 156): a server-side session's
        cookie never does, so a change of the revision changes this one."""
        secure = "; Secure" if admission.secure else ""
        ttl = int(self.pages.ttl)
        return f"{EVICTION_COOKIE}={number}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{secure}"

    def _cookie_changed(self, revision: Revision, headers: Sequence[tuple[str, str]]) -> bool:
        for name, value in headers:
            if name.lower() != "set-cookie":
                continue
            cookie = parse_set_cookie(value)
            if cookie is None or cookie.name not in self.tracked:
                continue
            lifetime = cookie.lifetime(time.time())
            deleted = lifetime is not None and lifetime <= 0
            payload = None if deleted or not cookie.value else cookie_payload(cookie.value)
            if payload != revision.before:
                return True
        return False


def _public(headers: Sequence[tuple[str, str]]) -> bool:
    from .core import shared_cacheable  # here: core imports this module

    return shared_cacheable(list(headers))


# -- for the app ---------------------------------------------------------------------------


def _revision(request: object) -> Revision | None:
    from .release import find_handle  # here: release imports core, which imports this

    handle = find_handle(request)
    notes = handle.notes if handle is not None else None
    found = notes.get("revision") if notes else None
    return found if isinstance(found, Revision) else None


def page_token(request: object) -> str | None:
    """The token a page rendered by this request embeds; None if no layer keeps revisions.

    ``request`` is the WSGI environ, the ASGI scope, or a framework's request object.
    """
    revision = _revision(request)
    return revision.token() if revision is not None else None


def hidden_field(request: object) -> str:
    """``<input type="hidden" name="session_revision" value="...">`` for a form (HTML-safe:
    the token is digits, a dot and hex); empty if no layer keeps revisions."""
    token = page_token(request)
    if token is None:
        return ""
    return f'<input type="hidden" name="{FIELD}" value="{token}">'


def is_stale(request: object) -> bool:
    """Whether this request came from a page older than its session (policy ``"flag"``)."""
    revision = _revision(request)
    return revision is not None and revision.stale


def session_changed(request: object) -> bool:
    """Tell the layer that this request changed its session (a server-side session the
    layer cannot see change); True if a layer keeps revisions for it."""
    revision = _revision(request)
    if revision is None:
        return False
    revision.changed = True
    return True
