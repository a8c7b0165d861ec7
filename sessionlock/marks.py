"""Per-view marks: a view decorated with :func:`shared` holds its session shared.

The frameworks' adapters re-export :func:`shared` (``sessionlock.flask.shared``,
``sessionlock.django.shared``, ``sessionlock.starlette.shared``) and find, before the app
runs, the view a request will reach, as their router will; :func:`predicate` joins that to
the ``shared`` option. A process with no marked view pays nothing per request for marks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from ._types import Request
from .core import _exemption

__all__ = ["is_marked", "predicate", "shared"]

_View = TypeVar("_View", bound=Callable[..., Any])
_MARK = "__sessionlock_shared__"
_marked: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def shared(view: _View) -> _View:
    """Mark a view as one that only reads the session: its requests hold it shared, side
    by side with the session's other readers (see the ``shared`` option)."""
    setattr(view, _MARK, True)
    _marked.add(view)
    return view


def is_marked(view: object) -> bool:
    return getattr(view, _MARK, False) is True


def predicate(
    option: Collection[str] | Callable[[Request], bool] | None,
    view_of: Callable[[Request], object],
) -> Callable[[Request], bool]:
    """The ``shared`` option (methods, path prefixes, a predicate), or a marked view:
    ``view_of(request)`` is the view the request will reach (None: none)."""
    named = _exemption(option, "shared")

    def is_shared(request: Request) -> bool:
        if named is not None and named(request):
            return True
        return bool(_marked) and is_marked(view_of(request))

    return is_shared
