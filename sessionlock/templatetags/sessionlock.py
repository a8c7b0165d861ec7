"""``{% load sessionlock %}``: ``{% session_revision_field %}`` in a form dates the page.

The hidden field :func:`sessionlock.stale.hidden_field` gives (``stale_pages`` in
``SESSIONLOCK``; the template needs ``request`` in its context, which Django's default
``request`` context processor puts there). ``{% session_revision %}`` is the bare token,
for a ``Session-Revision`` header sent by fetch.
"""

from __future__ import annotations

from typing import Any

from django import template  # type: ignore[import-untyped]
from django.utils.safestring import mark_safe  # type: ignore[import-untyped]

from ..stale import hidden_field, page_token

register = template.Library()


@register.simple_tag(takes_context=True)  # type: ignore[untyped-decorator]
def session_revision_field(context: Any) -> str:
    request = context.get("request")
    # Digits, a dot and hex in a fixed tag: nothing to escape.
    return mark_safe(hidden_field(request)) if request is not None else ""  # noqa: S308


@register.simple_tag(takes_context=True)  # type: ignore[untyped-decorator]
def session_revision(context: Any) -> str:
    request = context.get("request")
    return (page_token(request) or "") if request is not None else ""
