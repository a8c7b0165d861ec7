"""sessionlock: one session's concurrent requests, serialized, so no update is lost.

from sessionlock.wsgi import SessionLockMiddleware   # or sessionlock.asgi
app = SessionLockMiddleware(app, backend="memory://", key="cookie:sessionid")
"""

from __future__ import annotations

from .backends import Backend, Lease, close_all, from_url
from .errors import (
    BackendUnavailable,
    ClientGone,
    ConfigurationError,
    LeaseLost,
    LockTimeout,
    QueueFull,
    SessionLockError,
)
from .fencing import session_fence
from .release import release_session
from .rotate import rotate_identity

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ClientGone",
    "ConfigurationError",
    "Lease",
    "LeaseLost",
    "LockTimeout",
    "QueueFull",
    "SessionLockError",
    "__version__",
    "close_all",
    "from_url",
    "release_session",
    "rotate_identity",
    "session_fence",
]
