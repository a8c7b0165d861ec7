"""Django: the session lock before ``SessionMiddleware``, the rules after it.

    # settings.py
    INSTALLED_APPS = [..., "sessionlock.django.SessionLockConfig"]   # system checks
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "sessionlock.django.SessionLockMiddleware",       # the lock: before the session
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        # ...
        "sessionlock.django.SessionRulesMiddleware",      # the rules: after the session
    ]
    SESSIONLOCK = {
        "backend": "file:///var/lib/myproject/locks",    # any middleware option
        "key": "cookie:sessionid",                        # database/cache sessions
        "rules": "exams.session_rules.RULES",             # a Ruleset, a list, or its path
    }

``SessionLockMiddleware`` takes the session's lock before ``SessionMiddleware`` loads the
session and releases it once the response has come back through it, i.e. after the session
was saved. ``SessionRulesMiddleware`` runs the rules on ``request.session`` when the view
returns, and ``SessionMiddleware``'s ``process_response``, outside it, saves the result. Both
are sync and async capable. Both build what they need from ``SESSIONLOCK`` when Django loads
them (at handler load, never on an event loop at a request: the lock's backend opens its
directory then), and rebuild it if the setting object changes, so ``override_settings``
works; backends are shared per URL (:func:`sessionlock.backends.from_url`), so a rebuild on a
known URL opens nothing. A key of ``SESSIONLOCK`` that is neither a middleware option
(:data:`sessionlock.options.NAMES`) nor ``rules`` is a ConfigurationError naming the known
ones (and ``manage.py check`` reports it as ``sessionlock.E004``).

Design note: the lock is a Django middleware so it can be listed, ordered and checked
(``manage.py check``: ``sessionlock.E001`` ...) like any other. Django's ``signed_cookies``
engine needs more than a lock (the latest cookie must be handed to the next request): wrap
the whole application instead, ``SessionLockMiddleware(get_wsgi_application(),
cookie_session="sessionid")`` from :mod:`sessionlock.wsgi` (or :mod:`sessionlock.asgi`),
which also covers the middleware listed before it. The rules middleware works with both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from http.cookies import SimpleCookie
from types import MappingProxyType
from typing import Any, TypeAlias

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from .core import REFUSED, Admission, Core, Refusal, shared_cacheable
from .errors import ConfigurationError
from .marks import predicate, shared
from .options import NAMES, check_names
from .rules import Ruleset, as_ruleset
from .stale import FIELD, PEEK, session_changed, token_in, wants_body

__all__ = ["SessionLockConfig", "SessionLockMiddleware", "SessionRulesMiddleware", "conf", "shared"]

logger = logging.getLogger("sessionlock")

# Django's request and response objects (untyped without django-stubs).
Request: TypeAlias = Any
Response: TypeAlias = Any
GetResponse: TypeAlias = Callable[[Request], Any]

#: The keys SESSIONLOCK takes: every middleware option, and the rules.
OPTION_KEYS = frozenset(NAMES)
SETTING_KEYS = OPTION_KEYS | {"rules"}


class SessionLockConfig(AppConfig):  # type: ignore[misc]
    """List ``"sessionlock.django.SessionLockConfig"`` in INSTALLED_APPS for the checks."""

    name = "sessionlock"
    label = "sessionlock"
    verbose_name = "sessionlock"

    def ready(self) -> None:
        from . import django_checks  # noqa: F401  (registers the system checks)


#: What an absent SESSIONLOCK reads as: one object, so that it does not look changed each time.
_UNSET: Mapping[str, Any] = MappingProxyType({})


def conf() -> Mapping[str, Any]:
    """The ``SESSIONLOCK`` setting, checked: a dict of middleware options and ``rules``."""
    value = getattr(settings, "SESSIONLOCK", _UNSET)
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"SESSIONLOCK must be a dict, got {type(value).__name__}")
    check_names(value, "the SESSIONLOCK setting", known=SETTING_KEYS)
    return value


def ruleset_from(value: Any) -> Ruleset:
    """A Ruleset from SESSIONLOCK['rules']: a Ruleset, a list of rules, or a dotted path."""
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as error:
            raise ConfigurationError(f"SESSIONLOCK['rules'] {value!r}: {error}") from error
    if not isinstance(value, Ruleset) and not isinstance(value, Iterable):
        raise ConfigurationError("SESSIONLOCK['rules'] must be a Ruleset, rules, or their path")
    return as_ruleset(value)


class _Built:
    """Built from SESSIONLOCK at once; rebuilt when the setting object changes.

    Made when Django loads the middleware (handler load, before any request), not at a
    request on the event loop. A rebuild happens at the request that sees a new setting
    object (``override_settings``, in tests).
    """

    def __init__(self, build: Callable[[Mapping[str, Any]], Any]) -> None:
        self._build = build
        self._source = conf()
        self._value: Any = build(self._source)

    def get(self) -> Any:
        source = conf()
        if source is not self._source:
            self._value = self._build(source)
            self._source = source
        return self._value


def _build_core(source: Mapping[str, Any]) -> Core:
    options = {k: v for k, v in source.items() if k in OPTION_KEYS}
    if options.get("cookie_session") is not None:
        raise ConfigurationError(
            "cookie_session needs the WSGI/ASGI middleware around get_wsgi_application(): "
            "see sessionlock.django's docstring"
        )
    # Inside Django's handler the Cookie header is read before we could hand the latest
    # cookie over, and responses are not finished through Core: no tracking here.
    options["cookie_session"] = None
    options["shared"] = _shared_for(options.get("shared"))
    return Core(**options)


def _shared_for(option: Any) -> Callable[[Any], bool]:
    from django.urls import Resolver404, resolve  # type: ignore[import-untyped]

    def view_of(meta: Any) -> object:
        try:
            return resolve(meta.get("PATH_INFO", "/")).func
        except Resolver404:
            return None

    return predicate(option, view_of)


class SessionLockMiddleware:
    """The lock: list it before ``django.contrib.sessions.middleware.SessionMiddleware``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self._core = _Built(_build_core)
        self._misplaced_reported = False

    def __call__(self, request: Request) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        core: Core = self._core.get()
        admission = self._admit(core, request)
        if admission is None:
            return self.get_response(request)
        try:
            core.enter(admission)
        except REFUSED as error:
            return _refusal(core, admission, error)
        try:
            core.prepare(admission, request.META)
            refusal = _judge(core, admission, request)
            response = refusal if refusal is not None else self.get_response(request)
            _revise(core, admission, request, response)
        finally:
            core.leave(admission)  # SessionMiddleware, inside, has saved the session
        return _finish(admission, response)

    async def __acall__(self, request: Request) -> Response:
        core: Core = self._core.get()
        admission = self._admit(core, request)
        if admission is None:
            return await self.get_response(request)
        try:
            # Django hands middleware no receive channel: a waiter cannot see its client
            # leave, and waits until its turn or the timeout.
            await core.enter_async(admission, _never)
        except REFUSED as error:
            return _refusal(core, admission, error)
        try:
            # Revisions outside process memory, and a form to parse (a large upload goes to a
            # temporary file), are I/O: off the event loop, as the ASGI middleware does.
            if core.revisions_block:
                await asyncio.to_thread(core.prepare, admission, request.META)
            else:
                core.prepare(admission, request.META)
            refusal = None
            if core.revisions is not None:
                refusal = await asyncio.to_thread(_judge, core, admission, request)
            response = refusal if refusal is not None else await self.get_response(request)
            if core.revisions_block:
                await asyncio.to_thread(_revise, core, admission, request, response)
            else:
                _revise(core, admission, request, response)
        finally:
            await core.leave_async(admission)
        return _finish(admission, response)

    def _admit(self, core: Core, request: Request) -> Admission | None:
        if hasattr(request, "session") and not self._misplaced_reported:
            self._misplaced_reported = True
            logger.error(
                "sessionlock.django.SessionLockMiddleware runs after SessionMiddleware: the "
                "session is saved after the lock is released; list it before "
                "SessionMiddleware (check sessionlock.E001)"
            )
        return core.admit(request.META)


class SessionRulesMiddleware:
    """The rules: list it after ``SessionMiddleware``; runs SESSIONLOCK['rules']."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self._rules = _Built(lambda source: ruleset_from(source.get("rules", ())))
        self._misplaced_reported = False

    def __call__(self, request: Request) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        self._check_placement(request)
        response = self.get_response(request)
        self._enforce(request, response)
        return response

    async def __acall__(self, request: Request) -> Response:
        self._check_placement(request)
        response = await self.get_response(request)
        # Rules run only on a session the view accessed, which is loaded already: no
        # database call happens here, so it is safe on the event loop.
        self._enforce(request, response)
        return response

    def _check_placement(self, request: Request) -> None:
        # Inside SessionMiddleware, request.session exists when the request reaches us.
        if not hasattr(request, "session") and not self._misplaced_reported:
            self._misplaced_reported = True
            logger.error(
                "sessionlock.django.SessionRulesMiddleware found no request.session: list "
                "it after SessionMiddleware (check sessionlock.E002)"
            )

    def _enforce(self, request: Request, response: Response) -> None:
        session = getattr(request, "session", None)
        if session is None or self._misplaced_reported:
            return  # outside the session layer, a repair would come after the save
        rules: Ruleset = self._rules.get()
        report = rules.enforce(session)
        if report and rules.header is not None:
            response[rules.header] = rules.header_value(report)


async def _never() -> None:
    await asyncio.Event().wait()


def _judge(core: Core, admission: Admission, request: Request) -> Response | None:
    """A stale page's request answered (``stale_pages``): its token from the header, the
    query, or the form: ``request.POST`` for a POST (as Django's CSRF middleware reads it
    anyway), the body's first bytes for another method (Django parses no form for them)."""
    revisions = core.revisions
    if revisions is None or request.method not in revisions.pages.methods:
        return None
    meta = request.META
    content_type = str(meta.get("CONTENT_TYPE", ""))
    token = token_in(meta.get("HTTP_SESSION_REVISION"), meta.get("QUERY_STRING", ""), "", None)
    if token is None and wants_body(content_type):
        if request.method == "POST":
            token = request.POST.get(FIELD)
        else:
            token = token_in(None, "", content_type, request.body[:PEEK])
    refusal = core.judge(admission, meta, token)
    return None if refusal is None else _answer(refusal)


def _revise(core: Core, admission: Admission, request: Request, response: Response) -> None:
    """Under the lease, the session saved: a modified session is a new revision (or, in a
    shared request, a write that races a writer's: reported)."""
    session = getattr(request, "session", None)
    if admission.shared and session is not None and getattr(session, "modified", False):
        logger.warning(
            "a shared request (%s %r) modified the session: it races the writers of its "
            "session; mark the view exclusive",
            request.method,
            request.path[:200],
        )
    if core.revisions is None:
        return
    if session is not None and getattr(session, "modified", False):
        session_changed(request.META)
    cache_control = response.get("Cache-Control", "")
    for name, value in core.revisions.end(admission, [("Cache-Control", cache_control)]):
        if name == "Cache-Control":
            if value not in cache_control:  # a refusal says no-store already
                response[name] = f"{cache_control}, {value}" if cache_control else value
        elif name == "Set-Cookie":
            response.cookies.update(SimpleCookie(value))
        else:
            response[name] = value


def _answer(refusal: Refusal) -> Response:
    response = HttpResponse(refusal.body, status=refusal.status)
    for name, value in refusal.headers:
        response[name] = value
    return response


def _refusal(core: Core, admission: Admission, error: Exception) -> Response:
    return _answer(core.refuse(admission, error))


def _finish(admission: Admission, response: Response) -> Response:
    public = shared_cacheable([("Cache-Control", response.get("Cache-Control", ""))])
    for name, value in admission.response_headers(cookies=not public):
        if name.lower() == "set-cookie":
            response.cookies.update(SimpleCookie(value))
        elif name in response:
            response[name] = f"{response[name]}, {value}"
        else:
            response[name] = value
    return response
