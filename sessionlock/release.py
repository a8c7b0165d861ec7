"""Early release: a handler done with its session lets the session's next request run now.

    import sessionlock

    @app.get("/report")
    def report():
        data = dict(flask.session)             # read what the page needs...
        sessionlock.release_session(flask.request)
        return render_slow_report(data)        # ...and let the user's other tabs go on

PHP's ``session_write_close()``. The lock is released anyway when the response head goes
out; call this when a handler has long work left *after* its last session access. After
the call the session must not change: a change would be saved without the lock (and, with
``cookie_session``, not tracked), exactly what the lock exists to prevent.

Harmless when called twice, from another thread, or on a request that no sessionlock layer
holds (it returns False then).
"""

from __future__ import annotations

from collections.abc import Mapping

from .core import HANDLE, Admission

__all__ = ["release_session"]

# Where frameworks keep the environ or scope on their request objects: Werkzeug, Bottle and
# Pyramid ``environ``, Falcon ``env``, Starlette and Quart ``scope``, Django ``META``.
_PLACES = ("environ", "scope", "env", "META")


def release_session(request: object) -> bool:
    """Release the session now; True if a sessionlock layer admitted this request.

    ``request`` is the WSGI environ, the ASGI scope, or a framework's request object.
    """
    handle = find_handle(request)
    if handle is None:
        return False
    handle.release()
    return True


def find_handle(request: object) -> Admission | None:
    """The handle (:class:`~sessionlock.core.Admission`) a layer left for this request."""
    for candidate in (request, *(getattr(request, place, None) for place in _PLACES)):
        if isinstance(candidate, Mapping):
            handle = candidate.get(HANDLE)
            if isinstance(handle, Admission):
                return handle
    return None
