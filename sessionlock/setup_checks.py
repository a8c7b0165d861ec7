"""Setups that cannot protect sessions, said once each, at the first request that shows them.

A misconfigured lock fails silently: requests still succeed, only updates get lost. So a layer
whose setup shows it cannot serialize, or cannot keep a cookie session consistent, logs an
ERROR with the fix, once per layer, on the ``sessionlock`` logger:

- **a per-process backend under several processes**: ``memory://`` while the WSGI server says
  ``wsgi.multiprocess`` (``gunicorn -w 4`` on a plain ``wsgi.py``, mod_wsgi daemons...): the
  processes do not see each other's locks;
- **a key that never matches**: a ``key`` other than the identity that found nothing in the
  first 100 requests carrying cookies (a typo such as ``cookie:sesionid``): requests without a
  key run unserialized. The cookie *names* seen are listed (never a value);
- **a signed-cookie session under another key**: requests carry a ``session`` cookie shaped
  like itsdangerous' signed values (Flask, Starlette, Quart), while the key is not the
  identity, so that cookie is not tracked: two concurrent requests start from the same
  cookie, and the second's Set-Cookie erases the first's update.

These are errors, not refusals to start: they only show at the first requests, when the
server already runs, and the layer still serializes what it can. Where the setup can be seen
before the first request (``sessionlock.gunicorn`` and ``sessionlock.uvicorn`` with
``memory://`` and several workers), the start is refused instead. A layer in the default setup
(``file://``, the identity key) has nothing to check: it costs those requests nothing.
"""

from __future__ import annotations

import logging
import re

from . import cookieheader
from ._types import Request

__all__ = ["SetupChecks"]

logger = logging.getLogger("sessionlock")

#: Requests carrying cookies that a non-identity key must match at least once.
UNMATCHED_LIMIT = 100
_NAMES_SHOWN = 8
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")  # a cookie name as an HTTP token
# itsdangerous' signed value, timestamped: payload.timestamp.signature (Flask's compressed
# payloads start with a dot; Starlette's payload is standard base64).
_SIGNED = re.compile(r"\.?[A-Za-z0-9_\-+/=]+\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{16,}")


class SetupChecks:
    """The checks of one layer. ``shared``: whether its backend excludes other processes;
    ``key``: its key spelled for a message, or None for the identity (no key to check).
    ``done``: nothing is left to look for (the layer stops calling :meth:`request`)."""

    __slots__ = ("_counting", "_key", "_names", "_shared", "_signed", "_unmatched", "done")

    def __init__(self, *, shared: bool, key: str | None) -> None:
        self._shared = shared
        self._key = key
        self._signed = key is not None  # still looking for a signed session cookie
        self._counting = key is not None  # still counting requests the key did not match
        self._unmatched = 0
        self._names: set[str] = set()
        self.done = shared and key is None

    def request(self, request: Request, matched: bool) -> None:
        """Look at a request; ``matched``: whether the key source found a key in it."""
        if not self._shared and request.get("wsgi.multiprocess"):
            self._shared = True  # said once
            logger.error(
                "sessionlock: the backend keeps its locks in this process, but the server "
                "runs several processes (wsgi.multiprocess): requests of one session in "
                "different processes are not serialized and can lose updates; use "
                "backend='file://' (the default, one host) or 'redis://' (several hosts)",
                extra={"sessionlock_setup": "per-process backend"},
            )
        if self._signed or self._counting:
            header = cookieheader.original(request)
            if header is not None:
                self._look_at(header, matched)
        self.done = self._shared and not (self._signed or self._counting)

    def _look_at(self, header: str, matched: bool) -> None:
        if self._signed:
            session = cookieheader.read(header, "session")
            if session is not None and _SIGNED.fullmatch(session):
                self._signed = False
                logger.error(
                    "sessionlock: requests carry a signed 'session' cookie (the default "
                    "session of Flask, Starlette or Quart) while the key is %s: that cookie is "
                    "not tracked, so concurrent requests start from the same cookie and "
                    "updates can be lost; keep the default key ('identity'), which tracks it",
                    self._key,
                    extra={"sessionlock_setup": "cookie session under another key"},
                )
        if not self._counting:
            return
        if matched:
            self._counting = False  # the key works
            return
        self._unmatched += 1
        if len(self._names) < _NAMES_SHOWN:
            for pair in header.split(";"):
                name = pair.partition("=")[0].strip()
                if _NAME.fullmatch(name):
                    self._names.add(name)
        if self._unmatched >= UNMATCHED_LIMIT:
            self._counting = False
            logger.error(
                "sessionlock: the key %s matched none of the first %d requests that carried "
                "cookies (names seen: %s): requests without a key run unserialized; if the "
                "session cookie has another name, name it in key=",
                self._key,
                UNMATCHED_LIMIT,
                ", ".join(sorted(self._names)[:_NAMES_SHOWN]) or "none",
                extra={"sessionlock_setup": "key never matched"},
            )
