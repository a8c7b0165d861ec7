"""The option names, known in one place: every entry point refuses the others by name.

The names are the keys of :class:`sessionlock.core.Options`, so an option added there is
known to the middleware classes, the Flask extension, Django's ``SESSIONLOCK``, the gunicorn
forms and the environment at once. A name that is not one of them is refused with the list
of known ones, and the closest name when there is one::

    unknown option 'timout' for SessionLockMiddleware (did you mean 'timeout'?); known:
    backend, cookie_session, exempt, key, max_waiters, max_waiting_threads, metrics,
    on_backend_error, release, secret, shared, stale_pages, timeout

The environment form (:func:`from_environ`, read by ``sessionlock.uvicorn:app``) is
``SESSIONLOCK_<OPTION>`` for every option:

- ``SESSIONLOCK_BACKEND``: a backend URL (``file:///dir``, ``memory://``);
- ``SESSIONLOCK_KEY``: a key spec (``identity``, ``cookie:NAME``, ``header:NAME``);
- ``SESSIONLOCK_TIMEOUT``: seconds (> 0), or ``none``: wait forever;
- ``SESSIONLOCK_MAX_WAITERS``: a whole number >= 0;
- ``SESSIONLOCK_MAX_WAITING_THREADS``: a whole number >= 0, or ``none``: derived from the
  server's threads;
- ``SESSIONLOCK_EXEMPT``: comma-separated path prefixes and methods (``/static/,OPTIONS``);
  empty, ``none`` or ``off``: nothing exempt;
- ``SESSIONLOCK_SECRET``: the key that hashes session keys (16+ bytes);
- ``SESSIONLOCK_COOKIE_SESSION``: comma-separated cookie names (default ``session``);
  empty, ``none`` or ``off``: no cookie tracked;
- ``SESSIONLOCK_RELEASE``: ``head`` or ``end``;
- ``SESSIONLOCK_ON_BACKEND_ERROR``: ``closed`` (503 while the backend fails) or ``open``
  (serve, serialized within the process only);
- ``SESSIONLOCK_SHARED``: comma-separated path prefixes and methods (``GET,HEAD``) whose
  requests hold their session shared; empty, ``none`` or ``off``: none;
- ``SESSIONLOCK_STALE_PAGES``: ``refuse``, ``flag`` or ``redirect:<url>`` (a
  :class:`~sessionlock.stale.StalePages` with that policy and its defaults); empty, ``none``
  or ``off``: no revision kept;
- ``SESSIONLOCK_METRICS``: ``prometheus`` (the process's
  :class:`~sessionlock.prometheus.PrometheusMetrics` on prometheus_client's default
  registry); empty, ``none`` or ``off``: no metrics.

Any other variable that starts with ``SESSIONLOCK_`` is refused (a typo would otherwise be
ignored in silence), except ``SESSIONLOCK_APP``, the uvicorn factory's app. A variable set
to the empty string means the option's default, except for the two lists, where it means
an empty list: nothing exempt, no cookie tracked.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import cast

from .core import Options
from .errors import ConfigurationError
from .stale import StalePages

__all__ = ["APP", "NAMES", "check_names", "from_environ"]

#: Every option's name, sorted: the keys of :class:`sessionlock.core.Options`.
NAMES: tuple[str, ...] = tuple(sorted(Options.__annotations__))

#: The variable (after the prefix) that names the app to wrap, for the uvicorn factory.
APP = "APP"

_OFF = frozenset({"", "none", "off"})


def check_names(
    options: Mapping[str, object], where: str, *, known: Collection[str] = NAMES
) -> None:
    """Refuse any name of ``options`` that is not ``known`` (by default, every option).

    ``where`` names what was given them (``"SessionLockMiddleware"``), after "for".
    """
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ConfigurationError(_unknown("option", unknown, f"for {where}", sorted(known)))


def from_environ(environ: Mapping[str, str], prefix: str = "SESSIONLOCK_") -> Options:
    """The options set by ``<prefix><OPTION>`` variables of ``environ``, parsed.

    Raises ConfigurationError for a value that does not parse, and for a variable that
    starts with ``prefix`` but names no option (nor the app: ``<prefix>APP``).
    """
    variables = {prefix + name.upper(): name for name in NAMES}
    allowed = {*variables, prefix + APP}
    unknown = sorted(name for name in environ if name.startswith(prefix) and name not in allowed)
    if unknown:
        # Close matches are looked for after the prefix: every name shares it.
        suffixes = {name[len(prefix) :]: name for name in sorted(allowed)}
        described = ", ".join(
            _described(name[len(prefix) :].upper(), suffixes, shown=name) for name in unknown
        )
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigurationError(
            f"unknown variable{plural} {described} in the environment; known: "
            + ", ".join(sorted(allowed))
        )
    options: dict[str, object] = {}
    for variable, name in variables.items():
        text = environ.get(variable)
        if text is None:
            continue
        value = _PARSERS.get(name, _text)(variable, text.strip())
        if value is not _DEFAULT:
            options[name] = value
    return cast("Options", options)


def _unknown(noun: str, unknown: Iterable[object], where: str, known: list[str]) -> str:
    names = {name: name for name in known}
    described = [_described(name, names) for name in unknown]
    plural = "s" if len(described) > 1 else ""
    return f"unknown {noun}{plural} {', '.join(described)} {where}; known: {', '.join(known)}"


def _described(name: object, known: Mapping[str, str], shown: object = None) -> str:
    """``'name'``, with ``(did you mean 'closest'?)`` when a known name is close."""
    shown = name if shown is None else shown
    if isinstance(name, str):
        close = difflib.get_close_matches(name, list(known), n=1)
        if close:
            return f"{shown!r} (did you mean {known[close[0]]!r}?)"
    return repr(shown)


# -- values of the environment ---------------------------------------------------------------

#: A parser's answer for "the option's default": the option is left out.
_DEFAULT = object()


def _text(variable: str, text: str) -> object:
    return text if text else _DEFAULT


def _seconds(variable: str, text: str) -> object:
    if not text:
        return _DEFAULT
    if text.lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(
            f"{variable} must be a number of seconds > 0 or 'none' (wait forever), got {text!r}"
        )
    return seconds


def _count(variable: str, text: str, none: str = "") -> object:
    if not text:
        return _DEFAULT
    if none and text.lower() == "none":
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    alternative = f", or 'none' ({none})" if none else ""
    raise ConfigurationError(f"{variable} must be a whole number >= 0{alternative}, got {text!r}")


def _threads(variable: str, text: str) -> object:
    return _count(variable, text, none="derived from the server's threads")


def _items(text: str) -> list[str] | None:
    """Comma-separated items; None for none at all (empty, ``none``, ``off``)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    return None if not items or text.lower() in _OFF else items


def _exempt(variable: str, text: str) -> object:
    return _items(text)


def _cookie_names(variable: str, text: str) -> object:
    names = _items(text)
    return names[0] if names is not None and len(names) == 1 else names


def _release(variable: str, text: str) -> object:
    if not text:
        return _DEFAULT
    if text.lower() in ("head", "end"):
        return text.lower()
    raise ConfigurationError(f"{variable} must be 'head' or 'end', got {text!r}")


def _on_backend_error(variable: str, text: str) -> object:
    if not text:
        return _DEFAULT
    if text.lower() in ("closed", "open"):
        return text.lower()
    raise ConfigurationError(f"{variable} must be 'closed' or 'open', got {text!r}")


def _stale_pages(variable: str, text: str) -> object:
    if text.lower() in _OFF:
        return _DEFAULT  # none kept: the default
    try:
        return StalePages.from_text(text)
    except ConfigurationError as error:
        raise ConfigurationError(
            f"{variable} must be 'refuse', 'flag', 'redirect:<url>' or 'off', got {text!r}"
        ) from error


def _metrics(variable: str, text: str) -> object:
    if text.lower() in _OFF:
        return _DEFAULT  # no metrics: the default
    if text.lower() == "prometheus":
        return "prometheus"
    raise ConfigurationError(f"{variable} must be 'prometheus' or 'off', got {text!r}")


#: How each option's variable is read; an option without one is read as text.
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "backend": _text,
    "key": _text,
    "timeout": _seconds,
    "max_waiters": _count,
    "max_waiting_threads": _threads,
    "exempt": _exempt,
    "secret": _text,
    "cookie_session": _cookie_names,
    "release": _release,
    "on_backend_error": _on_backend_error,
    "stale_pages": _stale_pages,
    "shared": _exempt,
    "metrics": _metrics,
}
