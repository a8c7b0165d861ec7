"""The exceptions sessionlock raises: catch :class:`SessionLockError` to catch them all."""

from __future__ import annotations


class SessionLockError(Exception):
    """Base class of every sessionlock error."""


class ConfigurationError(SessionLockError, ValueError):
    """An option, a backend URL or a deployment that cannot work as given."""


class LockTimeout(SessionLockError, TimeoutError):
    """A request waited longer than ``timeout`` for its session's lock (answered 503)."""


class QueueFull(SessionLockError):
    """More than ``max_waiters`` requests of one session were already waiting (answered 429)."""


class LeaseLost(SessionLockError):
    """A shared backend's lease expired or was taken while the request still held it."""


class BackendUnavailable(SessionLockError):
    """The backend could not be reached; raised ``from`` the backend's own exception."""


class ClientGone(SessionLockError):
    """The client disconnected while its request waited in the queue."""
