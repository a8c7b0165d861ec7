"""Serve an ASGI app wrapped in the middleware from ``uvicorn --factory``.

    SESSIONLOCK_APP=pkg.asgi:app SESSIONLOCK_KEY=cookie:sessionid \\
        uvicorn --factory sessionlock.uvicorn:app --workers 4

uvicorn calls a factory without arguments, so the options come from the environment, one
variable per option (parsed by :func:`sessionlock.options.from_environ`):

- ``SESSIONLOCK_APP`` (required): the app to wrap, ``package.module:attribute``;
- ``SESSIONLOCK_BACKEND``: a backend URL; default ``file://``, a private directory shared
  by all workers of the host;
- ``SESSIONLOCK_KEY``: a key spec (``identity``, ``cookie:NAME``, ``header:NAME``);
- ``SESSIONLOCK_TIMEOUT``: seconds a request may wait for its turn, or ``none`` (forever);
- ``SESSIONLOCK_MAX_WAITERS``: requests of one session allowed to wait at once;
- ``SESSIONLOCK_MAX_WAITING_THREADS``: a whole number, or ``none`` (WSGI only: ignored by
  the ASGI middleware's tasks, which cost no thread);
- ``SESSIONLOCK_EXEMPT``: comma-separated path prefixes and methods (``/static/,OPTIONS``);
  empty, ``none`` or ``off``: nothing exempt;
- ``SESSIONLOCK_SECRET``: the key (16+ bytes) that hashes session keys;
- ``SESSIONLOCK_COOKIE_SESSION``: comma-separated names of a signed-cookie session's
  cookie (default ``session``); empty, ``none`` or ``off``: no cookie tracked;
- ``SESSIONLOCK_RELEASE``: ``head`` or ``end``.

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
