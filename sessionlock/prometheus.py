"""Prometheus metrics of the session lock (``pip install 'sessionlock[prometheus]'``).

    from sessionlock.prometheus import PrometheusMetrics
    app = SessionLockMiddleware(app, metrics=PrometheusMetrics())
    # or metrics="prometheus", SESSIONLOCK_METRICS=prometheus: the same, on the default registry

Exported (``prefix`` ``sessionlock``):

- ``sessionlock_requests_total{outcome}``: requests that needed their session, by outcome:
  ``served``, ``timeout``, ``queue_full``, ``backend_error``;
- ``sessionlock_wait_seconds``: a histogram of the waits of requests that did not get their
  session at once (0.1 ms to 30 s);
- ``sessionlock_waiting``: requests waiting for their session now (a gauge, ``livesum``
  across the processes of prometheus_client's multiprocess mode);
- ``sessionlock_leases_lost_total``: leases lost while held (``redis://``);
- ``sessionlock_backend_errors_total``: lease calls the backend failed;
- ``sessionlock_rule_findings_total{rule,outcome}``: repair rules that fired;
- ``sessionlock_stale_requests_total{policy}``: requests from stale pages.

Labels take a few fixed values, and the rule names of the app's rulesets: never a session,
a path or anything a client sends. Serving ``/metrics`` is the app's (prometheus_client's
``make_wsgi_app``/``make_asgi_app``); under gunicorn see docs/metrics.md (multiprocess).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .errors import ConfigurationError
from .metrics import Metrics, Reason

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

try:
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram
except ImportError as error:  # pragma: no cover - the extra is not installed
    raise ConfigurationError(
        "sessionlock's Prometheus metrics need prometheus_client: "
        "pip install 'sessionlock[prometheus]'"
    ) from error

__all__ = ["BUCKETS", "PrometheusMetrics", "default"]

#: The wait histogram's buckets (seconds): a hand-off between two requests of a session in one
#: process takes tens of microseconds, a request behind a slow one seconds; 30 s is beyond
#: the default ``timeout`` (25 s).
BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class PrometheusMetrics(Metrics):
    """The events of :class:`~sessionlock.metrics.Metrics` as Prometheus metrics.

    registry: where the metrics are registered (default: prometheus_client's ``REGISTRY``).
              One instance per registry: a second one on the same registry is refused by
              prometheus_client (duplicated timeseries); share the instance between layers.
    prefix:   the first part of every metric's name.
    """

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "sessionlock"):
        registry = REGISTRY if registry is None else registry
        self.prefix = prefix
        self._requests = Counter(
            f"{prefix}_requests",
            "Requests that needed their session, by outcome: served, or refused (timeout, "
            "queue_full, backend_error)",
            ["outcome"],
            registry=registry,
        )
        self._served = self._requests.labels("served")
        self._refused = {
            reason: self._requests.labels(reason)
            for reason in ("timeout", "queue_full", "backend_error")
        }
        self._wait = Histogram(
            f"{prefix}_wait_seconds",
            "Time a request waited for its session (requests that did not get it at once)",
            buckets=BUCKETS,
            registry=registry,
        )
        self._waiting = Gauge(
            f"{prefix}_waiting",
            "Requests waiting for their session now",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._leases_lost = Counter(
            f"{prefix}_leases_lost",
            "Leases that expired or were taken while their request held them",
            registry=registry,
        )
        self._backend_errors = Counter(
            f"{prefix}_backend_errors",
            "Lease calls (acquire, release) that the backend failed",
            registry=registry,
        )
        self._findings = Counter(
            f"{prefix}_rule_findings",
            "Repair rules that fired, by rule and outcome (repaired, unrepaired, failed)",
            ["rule", "outcome"],
            registry=registry,
        )
        self._stale = Counter(
            f"{prefix}_stale_requests",
            "Requests sent from a stale page, by policy (refuse, redirect, flag)",
            ["policy"],
            registry=registry,
        )

    def served(self) -> None:
        self._served.inc()

    def waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def waiting(self, delta: int) -> None:
        self._waiting.inc(delta)

    def refused(self, reason: Reason) -> None:
        self._refused[reason].inc()

    def lease_lost(self) -> None:
        self._leases_lost.inc()

    def backend_error(self) -> None:
        self._backend_errors.inc()

    def finding(self, rule: str, outcome: str) -> None:
        self._findings.labels(rule, outcome).inc()

    def stale(self, policy: str) -> None:
        self._stale.labels(policy).inc()

    def __repr__(self) -> str:
        return f"PrometheusMetrics(prefix={self.prefix!r})"


_default: PrometheusMetrics | None = None
_default_lock = threading.Lock()


def default() -> PrometheusMetrics:
    """The process's metrics on the default registry (``metrics="prometheus"``): made once,
    shared by every layer that asks, as the registry takes each name once."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PrometheusMetrics()
        return _default
