"""What a layer reports as it works, for metrics: the ``metrics`` option.

    from sessionlock.prometheus import PrometheusMetrics
    app = SessionLockMiddleware(app, metrics=PrometheusMetrics())   # or metrics="prometheus"

A :class:`Metrics` is told of each event at the point it happens; every method here does
nothing, so a subclass overrides only what it counts. The events happen off the uncontended
path but for one: :meth:`Metrics.served`, once per request as it releases its session. With
``metrics=None`` (the default) a layer reports nothing and pays one attribute check per
request. Nothing a method is given names a session, a path or a user: labels made from its
arguments stay few (a rule's name, a policy, a reason).

Besides metrics: when OpenTelemetry is in use (``opentelemetry.trace`` imported by the app
or its instrumentation), a request that waited for its session gets, on the current span if
it is recording, the attribute ``sessionlock.wait_seconds`` and the event
``sessionlock.acquired``. Nothing is imported for it: an app without OpenTelemetry pays
a dictionary lookup per wait.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .backends import Lease
    from .stale import StalePages

__all__ = ["Metrics", "Reason", "from_option"]

#: Why a request was refused its turn: ``timeout`` (503 after ``timeout``), ``queue_full``
#: (429: ``max_waiters`` or ``max_waiting_threads`` reached), ``backend_error`` (503: the
#: backend failed, ``on_backend_error="closed"``).
Reason = Literal["timeout", "queue_full", "backend_error"]


class Metrics:
    """The events of a layer, each a no-op here: subclass and override what you count.

    A method must be quick and must not raise (it runs inside the request's handling).
    """

    def served(self) -> None:
        """A request that held its session released it (it ran, or was answered as stale)."""

    def waited(self, seconds: float) -> None:
        """A request got its session after waiting ``seconds`` (its Server-Timing ``dur``).

        Only requests that did not get it at once: in line behind another request of their
        session, or for a backend over the network (``redis://`` under ASGI: every request).
        """

    def waiting(self, delta: int) -> None:
        """The requests waiting now changed by ``delta`` (+1 as one starts, -1 as it ends)."""

    def refused(self, reason: Reason) -> None:
        """A request did not get its turn and was answered 429 or 503 (see :data:`Reason`)."""

    def lease_lost(self) -> None:
        """A request's lease expired or was taken while it held it (``redis://``), as seen
        when it released."""

    def backend_error(self) -> None:
        """The backend failed a lease call: at an acquire (refused or, with
        ``on_backend_error="open"``, let in) or at a release."""

    def finding(self, rule: str, outcome: str) -> None:
        """A repair rule fired: ``outcome`` is ``repaired``, ``unrepaired`` or ``failed``
        (the :class:`sessionlock.rules.Ruleset` ``counter`` hook)."""

    def stale(self, policy: str) -> None:
        """A request came from a stale page: ``policy`` is ``refuse``, ``redirect`` or
        ``flag`` (the :class:`sessionlock.stale.StalePages` ``counter`` hook)."""


def from_option(value: object) -> Metrics | None:
    """The option's value as a :class:`Metrics`: one, ``"prometheus"`` (the process's
    :class:`~sessionlock.prometheus.PrometheusMetrics` on the default registry), or None."""
    if value is None or isinstance(value, Metrics):
        return value
    if isinstance(value, str) and value.strip().lower() == "prometheus":
        from .prometheus import default

        return default()
    raise ConfigurationError(
        f"metrics must be a sessionlock.metrics.Metrics, 'prometheus' or None, got {value!r}"
    )


def wire(metrics: Metrics, stale_pages: StalePages | None) -> None:
    """Count stale requests and rule findings into ``metrics`` where no counter was given.

    Rules run in the framework adapters, away from the layer: a ruleset without a counter of
    its own counts into the metrics of the layer made last (``rules.fallback_counter``).
    """
    from . import rules  # the adapters' module: imported when metrics are on only

    if stale_pages is not None and stale_pages.counter is None:
        stale_pages.counter = metrics.stale
    rules.fallback_counter = metrics.finding


def released(metrics: Metrics, lease: Lease) -> None:
    """A request released ``lease``: served, and a lease lost if the backend found it so."""
    metrics.served()
    if getattr(lease.token, "lost", False) is True:  # redis:// marks its grant (Grant.lost)
        metrics.lease_lost()


@contextlib.contextmanager
def _counted(metrics: Metrics) -> Iterator[None]:
    metrics.waiting(1)
    try:
        yield
    finally:
        metrics.waiting(-1)


def waiting(metrics: Metrics | None) -> contextlib.AbstractContextManager[None]:
    """Around a wait: the waiters gauge counts the request while in it."""
    return contextlib.nullcontext() if metrics is None else _counted(metrics)


def trace_wait(seconds: float) -> None:
    """The wait on the current OpenTelemetry span, if the app uses OpenTelemetry at all."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # never imported by anyone: no span can be recording
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("sessionlock.wait_seconds", seconds)
        span.add_event("sessionlock.acquired", {"sessionlock.wait_seconds": seconds})
