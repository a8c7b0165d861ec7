"""Identity rotation at login: a planted identity is left with nothing.

    import sessionlock

    @app.post("/login")
    def login():
        ...                                           # check the password
        flask.session["user"] = user.id
        sessionlock.rotate_identity(flask.request)    # as Django's cycle_key() at login

The middleware's identity cookie names a browser's lock and its cookie-session records. An
attacker who can plant cookies in the victim's browser (a sibling subdomain over plain http)
can plant an identity the server issued to the attacker; when the victim then logs in, the
attacker replaying that identity would be a stale replay of the victim's jar, and be handed the
logged-in cookie. Rotating at every change of privilege closes this, exactly as rotating a
session id does (OWASP): the response gives this browser a new identity, the record moves to
it, and the old identity keeps no record. Over https the ``__Host-`` prefix already stops
planting; rotate anyway, it costs one Set-Cookie.

Call it while the request holds its session (before the response starts), at each change to
more privilege (login, sudo mode). Not at logout: a logout is tracked as a deletion under the
identity, and a request of the same browser still in flight must be handed that deletion (a
new identity would let it resurrect the session). It returns False when no sessionlock layer
with the identity key holds the request, or when it is too late.
"""

from __future__ import annotations

from .release import find_handle

__all__ = ["rotate_identity"]


def rotate_identity(request: object) -> bool:
    """Give this browser a new identity with this response; True if it will be.

    ``request`` is the WSGI environ, the ASGI scope, or a framework's request object.
    """
    handle = find_handle(request)
    return handle.rotate() if handle is not None else False
