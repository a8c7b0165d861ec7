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

from collections.abc import Callable, Mapping

from .core import RELEASE

__all__ = ["release_session"]

# Where frameworks keep the environ or scope on their request objects: Werkzeug, Bottle and
# Pyramid ``environ``, Falcon ``env``, Starlette and Quart ``scope``, Django ``META``.
_PLACES = ("environ", "scope", "env", "META")


def release_session(request: object) -> bool:
    """Release the session now; True if a sessionlock layer admitted this request.

    ``request`` is the WSGI environ, the ASGI scope, or a framework's request object.
    """
    door = find_door(request, RELEASE)
    if door is None:
        return False
    door()
    return True


def call_door(request: object, name: str) -> bool:
    """Call the callable a sessionlock layer left under ``name``; its answer, or False."""
    door = find_door(request, name)
    return bool(door()) if door is not None else False


def find_door(request: object, name: str) -> Callable[[], object] | None:
    """The callable under ``name`` in the request's environ or scope, if any."""
    for candidate in (request, *(getattr(request, place, None) for place in _PLACES)):
        if isinstance(candidate, Mapping):
            door = candidate.get(name)
            if callable(door):
                return door  # type: ignore[no-any-return]
    return None
