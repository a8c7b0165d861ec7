"""Backends chosen by URL, as in limits, Celery and Django's caches.

    from sessionlock.backends import from_url
    backend = from_url("memory://")

Schemes: ``memory://`` (one process), ``file:///path`` (the processes of one host; ``file://``
alone: a private directory under the system temp dir, the default), ``redis://host:6379/0``,
``rediss://`` and ``unix:///path/redis.sock`` (every process of several hosts; needs
``pip install 'sessionlock[redis]'``). An unknown scheme raises ConfigurationError, and so
does ``file://`` on a platform without ``fcntl`` (Windows: see docs/platforms.md).

One backend per URL per process: :func:`from_url` returns the same instance for the same
normalized URL (``file://`` and ``file:///tmp/sessionlock-1000/`` name one directory), so
every middleware naming it shares it and building many middlewares opens nothing new.
``backend.close()`` closes it for all of them and takes it out of the registry (a later
``from_url`` makes a fresh one); :func:`close_all` closes every one, e.g. at the end of a test
suite. A :class:`Backend` object passed to a middleware directly is yours: it is never
registered, and closing it is up to you.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ._shared import close_all, shared
from .base import Backend, Lease

__all__ = ["DEFAULT_URL", "Backend", "Lease", "close_all", "from_url"]

#: Used when no backend is given: a private directory (mode 0700) under the system temp dir,
#: like PHP's session files, so several worker processes are serialized out of the box.
DEFAULT_URL = "file://"

# scheme -> module. Each module has ``normalize(url) -> str`` (checks the URL, and names one
# backend one way) and ``from_url(url) -> Backend`` (a new one). Imported lazily so that
# optional dependencies (redis) are only needed by those who use them.
_SCHEMES: dict[str, str] = {
    "memory": "sessionlock.backends.memory",
    "file": "sessionlock.backends.file",
    "redis": "sessionlock.backends.redis",
    "rediss": "sessionlock.backends.redis",
    "unix": "sessionlock.backends.redis",
}


def from_url(url: str) -> Backend:
    """The backend a URL names: this process's one for that URL, made at the first call."""
    module = _module(url)
    return shared(module.normalize(url), lambda: module.from_url(url))


def _module(url: str) -> ModuleType:
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise ConfigurationError(f"backend URL {url!r} has no scheme, e.g. 'memory://'")
    try:
        name = _SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(f"unknown backend scheme {scheme!r}; known: {known}") from None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == "fcntl":  # Windows: no file locks of the kind file:// needs
            raise ConfigurationError(NO_FILE_LOCKS) from None
        raise


#: Why file:// (the default) cannot run here, and what to choose instead (docs/platforms.md).
NO_FILE_LOCKS = (
    f"the file:// backend (the default) needs POSIX file locks (fcntl), which {sys.platform}"
    " does not have: choose backend='memory://' if the app runs in one process, or"
    " backend='redis://host:6379/0' (pip install 'sessionlock[redis]') if it runs in several"
)
