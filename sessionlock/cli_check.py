"""``sessionlock check module:app``: what the lock in an app does, and what is wrong with it.

    $ sessionlock check myapp:app            # or myapp:create_app() as gunicorn takes it
    app myapp:app (Flask)
    chain: Flask > wsgi_app: SessionLockMiddleware > ...
    lock 1 at app.wsgi_app (sessionlock.wsgi.SessionLockMiddleware)
      backend file:///tmp/sessionlock-1000 (shared by this host's processes)
      ...
    problems: none

It imports the app as a server would, walks the layers an app object wraps (a middleware's
``app``, Flask's ``wsgi_app``, Starlette's and FastAPI's middleware stack, built as at the
first request), and prints each lock's effective configuration (:meth:`Core.describe`). Then
the problems the checks would report, found before any request: a session layer outside the
lock (:mod:`sessionlock.order`), a signed-cookie session the lock does not track (the
setup check of :mod:`sessionlock.setup_checks`, by the cookie's configured name rather than
by the cookies requests carry), Django's system checks (:mod:`sessionlock.django_checks`).
What only requests can show (a key that never matches, ``memory://`` under several
processes) is said as a note.

Exit status: 0 no problem, 1 problems, 2 no lock found or the app could not be imported.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import asgi, wsgi
from .core import Core
from .keys import Identity

__all__ = ["Layer", "Report", "inspect_app", "load_app", "run"]

#: Attributes that lead from a wrapper to what it wraps, first match wins.
_INNER = ("middleware_stack", "wsgi_app", "asgi_app", "app", "application", "_app")
_LOCKS = (wsgi.SessionLockMiddleware, asgi.SessionLockMiddleware)
_DEPTH = 64


class AppNotFound(Exception):
    """The app path could not be imported or named nothing (exit status 2)."""


@dataclass
class Layer:
    """A lock found in the app: where, its class, and its Core."""

    where: str
    kind: str
    core: Core


@dataclass
class Report:
    chain: list[str] = field(default_factory=list)  # "where: Type", outermost first
    layers: list[Layer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_app(spec: str) -> Any:
    """The object ``module:attr`` or ``module:factory(...)`` names (literal arguments only,
    as gunicorn takes them); the current directory is importable, as under a server."""
    module_name, _, expression = spec.partition(":")
    expression = expression or "app"
    if not module_name:
        raise AppNotFound(f"{spec!r} is not module:app")
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise AppNotFound(f"{expression!r} is not a name or a call") from None
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call is not None else node
    if not isinstance(target, (ast.Name, ast.Attribute)):
        raise AppNotFound(f"{expression!r} is not a name or a call")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise AppNotFound(f"cannot import {module_name!r}: {error}") from None
    for part in ast.unparse(target).split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppNotFound(f"{module_name!r} has no {ast.unparse(target)!r}") from None
    if call is None:
        return found
    try:
        args = [ast.literal_eval(arg) for arg in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except ValueError:
        raise AppNotFound(f"{expression!r}: only literal arguments are taken") from None
    return found(*args, **kwargs)


def _chain(app: Any) -> Iterator[tuple[str, Any]]:
    """(where, layer) from ``app`` inward, following :data:`_INNER`; each object once."""
    seen: set[int] = set()
    where, node = "app", app
    for _ in range(_DEPTH):
        if id(node) in seen:
            return
        seen.add(id(node))
        yield where, node
        if getattr(node, "middleware_stack", False) is None and callable(
            getattr(node, "build_middleware_stack", None)
        ):  # Starlette, FastAPI: built at the first request; built now, as it would be
            node.middleware_stack = node.build_middleware_stack()
        for name in _INNER:
            inner = getattr(node, name, None)
            if inner is None:
                continue
            if inspect.ismethod(inner) and id(inner.__self__) in seen:
                if name == "app" or name.endswith("_app"):  # where the app itself runs
                    yield f"{where}.{name}", inner
                return
            if inspect.isroutine(inner) and not inspect.ismethod(inner):
                continue  # a function: nothing to walk into
            if inspect.ismethod(inner):
                inner = inner.__self__
            where, node = f"{where}.{name}", inner
            break
        else:
            return


def _type_name(node: Any) -> str:
    if inspect.ismethod(node):
        return f"{type(node.__self__).__name__}.{node.__func__.__name__}"
    return type(node).__name__


def inspect_app(app: Any) -> Report:
    """The locks in ``app`` and the problems and notes about them."""
    report = Report()
    session_layers: list[tuple[float, str, str | None]] = []  # (position, what, cookie)
    first_lock: float | None = None
    django = False
    for position, (where, node) in enumerate(_chain(app)):
        report.chain.append(f"{where}: {_type_name(node)}")
        if isinstance(node, _LOCKS):
            kind = f"{type(node).__module__}.{type(node).__qualname__}"
            report.layers.append(Layer(where, kind, node.core))
            first_lock = position if first_lock is None else first_lock
            continue
        session = _session_layer(node)
        if session is not None:
            at, what, cookie = session
            session_layers.append((position if at is None else at, what, cookie))
        django = django or type(node).__module__.startswith("django.core.handlers")
    if django:
        report.layers.extend(_django_layers())
    tracked = {name for layer in report.layers for name in _tracked(layer.core)}
    for place, what, cookie in session_layers:
        if first_lock is not None and place < first_lock:
            report.problems.append(
                f"{what} is outside the lock (it comes first in the chain): the session is "
                "loaded before the lock is taken and saved after it is released, so "
                "concurrent updates can be lost; put SessionLockMiddleware outside it "
                "(Starlette, FastAPI: add_middleware(SessionLockMiddleware) after "
                "add_middleware(SessionMiddleware), or list it first in middleware=[...])"
            )
        if cookie is not None and report.layers and cookie not in tracked:
            report.problems.append(
                f"{what} (the signed cookie {cookie!r}) is not tracked by the lock "
                f"(tracked: {', '.join(sorted(tracked)) or 'none'}): "
                "concurrent requests start from the same cookie, and the last Set-Cookie "
                f"erases the others' updates; pass cookie_session={cookie!r} and keep the "
                "default key ('identity')"
            )
    if django:
        report.problems.extend(_django_problems())
    for layer in report.layers:
        if not layer.core.backend.shared:
            report.notes.append(
                f"{layer.where}: memory:// serializes the requests of one process only: "
                "fine under one process; under several (gunicorn -w 4, uvicorn --workers 4) "
                "use file:// (one host) or redis:// (several)"
            )
        if not isinstance(layer.core.key_source, Identity):
            report.notes.append(
                f"{layer.where}: whether the key matches the requests is checked at run "
                "time (an ERROR if none of the first 100 requests with cookies matched)"
            )
    return report


def _session_layer(node: Any) -> tuple[float | None, str, str | None] | None:
    """(position if not where it stands, what, its signed cookie's name or None) if
    ``node`` keeps a session, else None."""
    module = type(node).__module__
    name = _type_name(node)
    if module.startswith("starlette.middleware.sessions"):
        return None, f"Starlette's {name}", getattr(node, "session_cookie", "session")
    if module.startswith("beaker"):
        return None, f"Beaker's {name}", None
    interface = getattr(node, "session_interface", None)
    config = getattr(node, "config", None)
    if interface is not None and isinstance(config, dict):  # Flask, Quart
        signed = _type_name(interface) == "SecureCookieSessionInterface"
        cookie = config.get("SESSION_COOKIE_NAME", "session") if signed else None
        # Its session opens in its own wsgi_app (or asgi_app) method: the innermost layer,
        # inside whatever wraps app.wsgi_app.
        return math.inf, f"{name}'s session", cookie
    return None


def _tracked(core: Core) -> tuple[str, ...]:
    names = getattr(core.cookies, "names", None)
    return tuple(names) if names else ()


def _django_layers() -> list[Layer]:
    """The lock Django builds from SESSIONLOCK, if MIDDLEWARE lists it."""
    from django.conf import settings  # type: ignore[import-untyped]

    from .django import _build_core, conf

    path = "sessionlock.django.SessionLockMiddleware"
    if path not in list(getattr(settings, "MIDDLEWARE", None) or ()):
        return []
    return [Layer("settings.MIDDLEWARE", path, _build_core(conf()))]


def _django_problems() -> list[str]:
    from .django_checks import check_middleware_order, check_setting

    return [
        f"{m.id}: {m.msg} {m.hint or ''}".strip()
        for m in (*check_middleware_order(), *check_setting())
    ]


def format_report(spec: str, app: Any, report: Report) -> str:
    lines = [f"app {spec} ({_type_name(app)})", "chain:"]
    lines += [f"  {text}" for text in report.chain]
    for number, layer in enumerate(report.layers, 1):
        lines.append(f"lock {number} at {layer.where} ({layer.kind})")
        lines += [f"  {part}" for part in layer.core.describe().split("; ")]
    lines.append("problems:" if report.problems else "problems: none")
    lines += [f"  - {problem}" for problem in report.problems]
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {note}" for note in report.notes]
    return "\n".join(lines)


def run(spec: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The command: 0 no problem, 1 problems, 2 no lock found or no app."""
    try:
        app = load_app(spec)
    except AppNotFound as error:
        print(f"error: {error}", file=err)
        return 2
    except Exception:
        print(f"error: importing {spec!r} failed:", file=err)
        traceback.print_exc(file=err)
        return 2
    report = inspect_app(app)
    if not report.layers:
        print(
            f"error: no SessionLockMiddleware found in {spec} (looked through: "
            f"{', '.join(report.chain) or 'nothing'}); wrap the app, e.g. "
            "app.wsgi_app = SessionLockMiddleware(app.wsgi_app) for Flask",
            file=err,
        )
        return 2
    print(format_report(spec, app, report), file=out)
    return 1 if report.problems else 0
