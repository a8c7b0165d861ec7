"""Counts the requests the lock admitted, so a wrapped pass is known to have gone through it.

A wrapped test that passes proves nothing if its requests never reached the lock (an app
the wrapper missed, a request without a session key): the recorder notes which tests
moved this counter.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from sessionlock.core import Admission, Core

_lock = threading.Lock()
_admitted = 0
_installed = False


def admitted() -> int:
    """Requests admitted (serialized) by any sessionlock middleware in this process so far."""
    return _admitted


def install() -> None:
    """Count every non-None ``Core.admit``; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    original = Core.admit

    @functools.wraps(original)
    def admit(self: Core, request: Any) -> Admission | None:
        global _admitted
        admission = original(self, request)
        if admission is not None:
            with _lock:
                _admitted += 1
        return admission

    Core.admit = admit  # type: ignore[method-assign]
