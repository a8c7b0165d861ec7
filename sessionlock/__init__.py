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
from .metrics import Metrics
from .release import release_session
from .rotate import rotate_identity
from .stale import StalePages, hidden_field, is_stale, page_token, session_changed

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ClientGone",
    "ConfigurationError",
    "Lease",
    "LeaseLost",
    "LockTimeout",
    "Metrics",
    "QueueFull",
    "SessionLockError",
    "StalePages",
    "__version__",
    "close_all",
    "from_url",
    "hidden_field",
    "is_stale",
    "page_token",
    "release_session",
    "rotate_identity",
    "session_changed",
    "session_fence",
]
