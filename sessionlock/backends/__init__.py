"""Backends chosen by URL, as in limits, Celery and Django's caches.

    from sessionlock.backends import from_url
    backend = from_url("memory://")

Schemes: ``memory://`` (one process), ``file:///path`` (the processes of one host; ``file://``
alone: a private directory under the system temp dir, the default), ``redis://host:6379/0``
(many hosts). An unknown scheme raises ConfigurationError.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Backend, Lease

__all__ = ["DEFAULT_URL", "Backend", "Lease", "from_url"]

#: Used when no backend is given: a private directory (mode 0700) under the system temp dir,
#: like PHP's session files, so several worker processes are serialized out of the box.
DEFAULT_URL = "file://"

# scheme -> "module:factory"; the factory takes the URL. Imported lazily so that optional
# dependencies (redis) are only needed by those who use them.
_REGISTRY: dict[str, str] = {
    "memory": "sessionlock.backends.memory:from_url",
    "file": "sessionlock.backends.file:from_url",
}


def from_url(url: str) -> Backend:
    """Make the backend a URL names."""
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise ConfigurationError(f"backend URL {url!r} has no scheme, e.g. 'memory://'")
    try:
        target = _REGISTRY[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(_REGISTRY))
        raise ConfigurationError(f"unknown backend scheme {scheme!r}; known: {known}") from None
    module_name, _, factory = target.partition(":")
    module = importlib.import_module(module_name)
    backend: Backend = getattr(module, factory)(url)
    return backend
