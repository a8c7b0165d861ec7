"""The fencing number of the session a request holds, for the app's own writes.

    import sessionlock

    @app.post("/checkout")
    def checkout():
        fence = sessionlock.session_fence(flask.request)   # None on memory:// and file://
        db.execute(
            "UPDATE carts SET state = 'paid', fence = ? WHERE id = ? AND fence < ?",
            (fence, cart_id, fence),
        )

On ``redis://`` every grant of a session's lease increments that session's *fence*, a number
that only grows (it survives Redis losing it: it restarts from the server's clock, above any
earlier value). A request that lost its lease while it ran (a pause longer than ``lease_ttl``:
GC, swap, SIGSTOP; a failover) holds a smaller fence than the request that then got the
session: a store that refuses writes carrying a smaller fence than it already saw refuses the
stale request's (Kleppmann's fencing token). sessionlock fences its own cookie records so;
what the app writes to its own database only the app can fence.

None when no sessionlock layer holds the request's session (none wraps the app, the request
is exempt or nested, the session was released already), for a browser's very first request
with the identity key (its identity is brand new: nobody else can hold its session, so it
takes no lease), when the backend keeps no fence
(``memory://``, ``file://``: one host, where a process that pauses keeps its lock), and while
the backend is unavailable under ``on_backend_error="open"``.
"""

from __future__ import annotations

from .release import find_handle

__all__ = ["session_fence"]


def session_fence(request: object) -> int | None:
    """The fence of the session lease this request holds now, or None (see the module).

    ``request`` is the WSGI environ, the ASGI scope, or a framework's request object.
    """
    handle = find_handle(request)
    lease = handle.lease if handle is not None else None
    return lease.fence if lease is not None else None
