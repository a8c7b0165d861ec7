"""System checks for the Django integration: ``manage.py check`` reports misconfiguration.

    INSTALLED_APPS = [..., "sessionlock.django.SessionLockConfig"]   # registers these checks

sessionlock.E001  SessionLockMiddleware listed after SessionMiddleware (lock inside the session)
sessionlock.E002  SessionRulesMiddleware listed before SessionMiddleware (rules after the save)
sessionlock.E003  SessionRulesMiddleware listed without any SessionMiddleware
sessionlock.E004  the SESSIONLOCK setting is invalid (unknown key, bad option, bad rules)
sessionlock.W001  SessionLockMiddleware with the signed_cookies engine (stale cookies win)
sessionlock.W002  SessionRulesMiddleware listed but SESSIONLOCK has no rules
"""

from __future__ import annotations

from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.checks import Error, Tags, Warning, register  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from .errors import ConfigurationError

__all__ = ["check_middleware_order", "check_setting"]

_SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"


def _position(middleware: list[str], base: type) -> int | None:
    for index, path in enumerate(middleware):
        try:
            found = import_string(path)
        except ImportError:
            continue  # Django's own checks report it
        if isinstance(found, type) and issubclass(found, base):
            return index
    return None


def check_middleware_order(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E001, E002, E003, W001: where the lock and the rules sit around SessionMiddleware."""
    from .django import SessionLockMiddleware, SessionRulesMiddleware

    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    session = _position(middleware, import_string(_SESSION_MIDDLEWARE))
    lock = _position(middleware, SessionLockMiddleware)
    rules = _position(middleware, SessionRulesMiddleware)
    errors: list[Any] = []
    if lock is not None and session is not None and lock > session:
        errors.append(
            Error(
                "SessionLockMiddleware is listed after SessionMiddleware: the session is "
                "loaded before the lock and saved after its release.",
                hint="List sessionlock.django.SessionLockMiddleware before SessionMiddleware.",
                id="sessionlock.E001",
            )
        )
    if rules is not None and session is not None and rules < session:
        errors.append(
            Error(
                "SessionRulesMiddleware is listed before SessionMiddleware: its repairs "
                "would come after the session was saved.",
                hint="List sessionlock.django.SessionRulesMiddleware after SessionMiddleware.",
                id="sessionlock.E002",
            )
        )
    if rules is not None and session is None:
        errors.append(
            Error(
                "SessionRulesMiddleware is listed but no SessionMiddleware is.",
                hint=f"Add {_SESSION_MIDDLEWARE} before it.",
                id="sessionlock.E003",
            )
        )
    engine = getattr(settings, "SESSION_ENGINE", "")
    if lock is not None and engine == "django.contrib.sessions.backends.signed_cookies":
        errors.append(
            Warning(
                "SessionLockMiddleware cannot fix signed-cookie sessions: a request that "
                "waited still carries the old cookie, and its Set-Cookie wins.",
                hint="Wrap the application instead: sessionlock.wsgi.SessionLockMiddleware("
                'get_wsgi_application(), cookie_session="sessionid").',
                id="sessionlock.W001",
            )
        )
    return errors


def check_setting(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E004, W002: SESSIONLOCK builds a middleware, and its rules load."""
    from .django import SessionRulesMiddleware, _build_core, conf, ruleset_from

    try:
        source = conf()
        _build_core(source)  # the backend it opens is the shared one of its URL: kept
        ruleset = ruleset_from(source.get("rules", ()))
    except ConfigurationError as error:
        return [Error(f"SESSIONLOCK is invalid: {error}", id="sessionlock.E004")]
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    if not ruleset.rules and _position(middleware, SessionRulesMiddleware) is not None:
        return [
            Warning(
                "SessionRulesMiddleware is listed but SESSIONLOCK has no 'rules'.",
                hint="Set SESSIONLOCK['rules'] to a Ruleset, a list of rules, or its path.",
                id="sessionlock.W002",
            )
        ]
    return []


register(check_middleware_order, Tags.compatibility)
register(check_setting, Tags.compatibility)
