"""Serve an ASGI app wrapped in the middleware from ``uvicorn --factory``.

    SESSIONLOCK_APP=pkg.asgi:app SESSIONLOCK_KEY=cookie:sessionid \\
        uvicorn --factory sessionlock.uvicorn:app --workers 4

uvicorn calls a factory without arguments, so the options come from the environment:
``SESSIONLOCK_APP`` (required) names the app to wrap, ``package.module:attribute``, and every
option has its variable, ``SESSIONLOCK_<OPTION>`` (``SESSIONLOCK_BACKEND``, ``_KEY``,
``_TIMEOUT``, ...), parsed by :func:`sessionlock.options.from_environ`, whose docstring lists
them all (one list, so this one cannot fall behind). Without ``SESSIONLOCK_BACKEND`` the
backend is ``file://``, a private directory shared by all workers of the host.

Any other ``SESSIONLOCK_*`` variable stops the start with the list of known ones: a typo
such as ``SESSIONLOCK_TIMOUT`` would otherwise be ignored. Or write your own factory::

    def create_app():
        return sessionlock.uvicorn.wrap("pkg.asgi:app", backend="file:///var/lib/app/locks")

A per-process backend (``memory://``) under ``--workers`` > 1 (or ``WEB_CONCURRENCY``) is
refused with ConfigurationError at start, as under gunicorn.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ._types import ASGIApp
from .errors import ConfigurationError
from .gunicorn import load, wrap_app
from .options import APP, check_names, from_environ

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .core import Options

__all__ = ["app", "wrap"]

_PREFIX = "SESSIONLOCK_"


def wrap(target: str, **options: Unpack[Options]) -> ASGIApp:
    """The ASGI app at ``target``, wrapped, checked against uvicorn's worker count."""
    check_names(options, "sessionlock.uvicorn.wrap")
    wrapped: ASGIApp = wrap_app(load(target), asgi=True, workers=_workers(), **options)
    return wrapped


def app() -> ASGIApp:
    """The ``--factory`` entry point, configured by ``SESSIONLOCK_*`` variables."""
    options = from_environ(os.environ, _PREFIX)  # first: a typo is reported even without APP
    target = os.environ.get(_PREFIX + APP)
    if not target:
        raise ConfigurationError("set SESSIONLOCK_APP to the app to wrap, e.g. 'pkg.asgi:app'")
    return wrap(target, **options)


def _workers() -> int:
    """uvicorn's worker count, from its command line (also in spawned workers) or env."""
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg == "--workers" and index + 1 < len(argv):
            return _int(argv[index + 1])
        if arg.startswith("--workers="):
            return _int(arg.partition("=")[2])
    return _int(os.environ.get("WEB_CONCURRENCY", "1"))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1
