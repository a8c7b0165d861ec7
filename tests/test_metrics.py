"""Metrics (sessionlock.metrics, sessionlock.prometheus): each one moves when its event happens.

Every test makes its own prometheus_client CollectorRegistry and triggers the event for
real, as the tests of that event do (a request held in the app while another queues, a
timeout, ``max_waiters``, a rule repaired by the Flask extension, a stale page's form, a
Redis lease taken over while held), then reads the registry. Concurrent requests are
ordered with events and the queue probe, never with sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, session
from prometheus_client import CollectorRegistry, generate_latest

from sessionlock import BackendUnavailable, rules
from sessionlock.backends.memory import MemoryBackend
from sessionlock.backends.redis import RedisBackend
from sessionlock.core import Core
from sessionlock.errors import ConfigurationError
from sessionlock.flask import SessionLock
from sessionlock.metrics import Metrics
from sessionlock.options import from_environ
from sessionlock.prometheus import PrometheusMetrics, default
from sessionlock.rules import required
from tests import test_asgi as asgi_t
from tests import test_wsgi as wsgi_t
from tests.redis_server import RedisServer, redis_server
from tests.test_stale_pages import back_and_submit, flask_exam

__all__ = ["redis_server"]  # the fixture, imported for pytest

SID = wsgi_t.SID
WAIT = 10.0  # liveness guard for event waits; never reached when the code is right


@pytest.fixture(autouse=True)
def _no_leftover_rule_counter() -> Iterator[None]:
    """A layer with metrics becomes the rules' fallback counter: not past the test."""
    before = rules.fallback_counter
    yield
    rules.fallback_counter = before


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(f"sessionlock_{name}", labels)
    return 0.0 if found is None else found


def requests(registry: CollectorRegistry) -> dict[str, float]:
    outcomes = ("served", "timeout", "queue_full", "backend_error")
    return {o: value(registry, "requests_total", outcome=o) for o in outcomes}


# -- waits ----------------------------------------------------------------------------------


def test_a_queued_request_is_a_waiter_then_a_wait(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    middleware = wsgi_t.by_cookie(wsgi_t.hello, metrics=metrics)
    gate = wsgi_t.observed(middleware)
    first = wsgi_t.holding(middleware, f"sid={SID}")
    thread, out = wsgi_t.in_thread(
        lambda: wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}"))
    )
    gate.wait_for(lambda: gate.queued == 1)
    assert value(registry, "waiting") == 1
    assert value(registry, "wait_seconds_count") == 0
    first.close()
    thread.join(WAIT)
    assert out[0].code == 200
    assert value(registry, "waiting") == 0
    assert value(registry, "wait_seconds_count") == 1
    assert value(registry, "wait_seconds_sum") > 0
    assert requests(registry) == {"served": 2, "timeout": 0, "queue_full": 0, "backend_error": 0}


def test_control_an_uncontended_request_is_served_without_a_wait(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    middleware = wsgi_t.by_cookie(wsgi_t.hello, metrics=metrics)
    for _ in range(3):
        assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == 200
    assert requests(registry)["served"] == 3
    assert value(registry, "wait_seconds_count") == 0
    assert value(registry, "waiting") == 0


def test_asgi_a_queued_task_is_a_waiter_then_a_wait(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    async def main() -> None:
        leave, inside = asyncio.Event(), asyncio.Event()
        middleware = asgi_t.by_cookie(asgi_t.held_app(leave, inside=inside), metrics=metrics)
        gate = asgi_t.observed(middleware)
        first, second = asgi_t.Client(), asgi_t.Client()
        one = asgi_t.start(middleware, asgi_t.scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()
        two = asgi_t.start(middleware, asgi_t.scope_for("/2", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 1)
        assert value(registry, "waiting") == 1
        leave.set()
        await asyncio.wait_for(asyncio.gather(one, two), WAIT)
        assert (first.status, second.status) == (200, 200)

    asgi_t.run(main())
    assert value(registry, "waiting") == 0
    assert value(registry, "wait_seconds_count") == 1
    assert requests(registry)["served"] == 2


def test_asgi_a_client_gone_while_waiting_is_no_waiter_any_more(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    async def main() -> None:
        leave, inside = asyncio.Event(), asyncio.Event()
        middleware = asgi_t.by_cookie(asgi_t.held_app(leave, inside=inside), metrics=metrics)
        gate = asgi_t.observed(middleware)
        first, second = asgi_t.Client(), asgi_t.Client()
        one = asgi_t.start(middleware, asgi_t.scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()
        two = asgi_t.start(middleware, asgi_t.scope_for("/2", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 1)
        second.disconnect()
        await asyncio.wait_for(two, WAIT)
        assert value(registry, "waiting") == 0
        leave.set()
        await one

    asgi_t.run(main())
    assert requests(registry)["served"] == 1
    assert value(registry, "wait_seconds_count") == 0


# -- refusals -------------------------------------------------------------------------------


def test_a_timeout_is_counted(registry: CollectorRegistry, metrics: PrometheusMetrics) -> None:
    middleware = wsgi_t.by_cookie(wsgi_t.hello, timeout=0.01, metrics=metrics)
    first = wsgi_t.holding(middleware, f"sid={SID}")
    assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == 503
    assert requests(registry)["timeout"] == 1
    assert value(registry, "waiting") == 0
    first.close()
    assert requests(registry) == {"served": 1, "timeout": 1, "queue_full": 0, "backend_error": 0}
    assert value(registry, "wait_seconds_count") == 0  # a wait that ended in a refusal


def test_a_full_queue_is_counted(registry: CollectorRegistry, metrics: PrometheusMetrics) -> None:
    middleware = wsgi_t.by_cookie(wsgi_t.hello, timeout=None, max_waiters=0, metrics=metrics)
    first = wsgi_t.holding(middleware, f"sid={SID}")
    assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == 429
    first.close()
    assert requests(registry) == {"served": 1, "timeout": 0, "queue_full": 1, "backend_error": 0}
    assert value(registry, "waiting") == 0


class FailsOnce(MemoryBackend):
    """A backend whose first lease call fails (a full disk, Redis down), then recovers."""

    failed = False

    def try_acquire(self, key: str, *, shared: bool = False) -> Any:
        if not self.failed:
            self.failed = True
            raise BackendUnavailable("the store is unreachable")
        return super().try_acquire(key, shared=shared)


@pytest.mark.parametrize(
    ("policy", "first_status", "refused"),
    [pytest.param("closed", 503, 1, id="closed"), pytest.param("open", 200, 0, id="open")],
)
def test_a_backend_error_is_counted(
    registry: CollectorRegistry,
    metrics: PrometheusMetrics,
    policy: str,
    first_status: int,
    refused: int,
) -> None:
    middleware = wsgi_t.by_cookie(
        wsgi_t.hello, backend=FailsOnce(), on_backend_error=policy, metrics=metrics
    )
    assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == first_status
    assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == 200
    assert value(registry, "backend_errors_total") == 1
    assert requests(registry)["backend_error"] == refused
    assert requests(registry)["served"] == 2 - refused


# -- rules, stale pages, leases -------------------------------------------------------------


def rules_app(**options: Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = "metrics-test-secret-0123456789abcdef"
    SessionLock(app, rules=[required("step", 1)], backend="memory://", **options)

    @app.post("/visit")
    def visit() -> Any:
        session["visits"] = session.get("visits", 0) + 1
        return {"step": session.get("step")}

    return app


def test_a_rule_repair_is_counted_by_rule_and_outcome(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    client = rules_app(metrics=metrics).test_client()
    assert client.post("/visit").json == {"step": None}  # the handler ran before the repair
    assert client.post("/visit").json == {"step": 1}  # repaired: nothing more to count
    counted = value(registry, "rule_findings_total", rule="required:step", outcome="repaired")
    assert counted == 1


def test_control_no_metrics_no_rule_counted(registry: CollectorRegistry) -> None:
    PrometheusMetrics(registry)  # on the registry, but given to no layer
    client = rules_app().test_client()
    client.post("/visit")
    assert value(registry, "rule_findings_total", rule="required:step", outcome="repaired") == 0


def test_a_stale_page_is_counted_by_policy(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    status, answers = back_and_submit(flask_exam(stale_pages="refuse", metrics=metrics))
    assert (status, answers) == (409, {})
    assert value(registry, "stale_requests_total", policy="refuse") == 1


def test_a_counter_the_user_gave_is_kept(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    from sessionlock.stale import StalePages

    counted: list[str] = []
    pages = StalePages(counter=counted.append)
    back_and_submit(flask_exam(stale_pages=pages, metrics=metrics))
    assert counted == ["refuse"]
    assert value(registry, "stale_requests_total", policy="refuse") == 0


def test_a_lease_lost_while_held_is_counted_at_its_release(
    redis_server: RedisServer, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    """The holder's lease expires (its watchdog stopped: a pause past ``lease_ttl``) and
    another process takes the session; the holder's release finds it lost."""
    holder, other = RedisBackend(redis_server.url), RedisBackend(redis_server.url)
    taken: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/pause":
            holder._stop.set()  # nobody renews
            key = environ["sessionlock.handle"].key
            assert holder._client.pexpire(f"sessionlock:{{{key}}}:lease", 1)
            taken.append(other.acquire(key, WAIT))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    middleware = wsgi_t.SessionLockMiddleware(
        app, backend=holder, key="cookie:sid", metrics=metrics
    )
    try:
        assert wsgi_t.call(middleware, wsgi_t.environ_for("/", cookie=f"sid={SID}")).code == 200
        assert value(registry, "leases_lost_total") == 0  # the control: a lease kept
        assert wsgi_t.call(middleware, wsgi_t.environ_for("/pause", cookie=f"sid={SID}")).code == (
            200
        )
        assert taken[0] is not None
        assert value(registry, "leases_lost_total") == 1
        assert requests(registry)["served"] == 2
    finally:
        if taken and taken[0] is not None:
            other.release(taken[0])
        other.close()
        holder.close()


def test_asgi_a_lease_lost_while_held_is_counted_at_its_release(
    redis_server: RedisServer, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    """As above, under ASGI: redis:// releases through ``leave_async`` (a helper thread)."""
    holder, other = RedisBackend(redis_server.url), RedisBackend(redis_server.url)
    taken: list[Any] = []

    def lose(key: str) -> None:
        holder._stop.set()  # nobody renews
        assert holder._client.pexpire(f"sessionlock:{{{key}}}:lease", 1)
        taken.append(other.acquire(key, WAIT))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/pause":
            await asyncio.to_thread(lose, scope["sessionlock.handle"].key)
        await asgi_t.hello(scope, receive, send)

    middleware = asgi_t.SessionLockMiddleware(
        app, backend=holder, key="cookie:sid", metrics=metrics
    )

    async def main() -> None:
        first = await asgi_t.call(middleware, asgi_t.scope_for("/", cookie=f"sid={SID}"))
        assert first.status == 200
        assert value(registry, "leases_lost_total") == 0  # the control: a lease kept
        paused = await asgi_t.call(middleware, asgi_t.scope_for("/pause", cookie=f"sid={SID}"))
        assert paused.status == 200

    try:
        asgi_t.run(main())
        assert taken[0] is not None
        assert value(registry, "leases_lost_total") == 1
        assert requests(registry)["served"] == 2
    finally:
        if taken and taken[0] is not None:
            other.release(taken[0])
        other.close()
        holder.close()


# -- configuration --------------------------------------------------------------------------


def test_no_metrics_by_default() -> None:
    assert Core(backend="memory://").metrics is None


def test_the_environment_form_names_the_default_prometheus_metrics() -> None:
    assert from_environ({"SESSIONLOCK_METRICS": "prometheus"}) == {"metrics": "prometheus"}
    assert from_environ({"SESSIONLOCK_METRICS": "off"}) == {}
    with pytest.raises(ConfigurationError, match="SESSIONLOCK_METRICS"):
        from_environ({"SESSIONLOCK_METRICS": "statsd"})
    one = Core(backend="memory://", **from_environ({"SESSIONLOCK_METRICS": "prometheus"}))
    two = Core(backend="memory://", metrics="prometheus")  # the registry takes a name once
    assert one.metrics is two.metrics is default()


def test_a_bad_metrics_value_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="metrics must be"):
        Core(backend="memory://", metrics=object())  # type: ignore[arg-type]


def test_a_subclass_counts_only_what_it_overrides() -> None:
    class Refusals(Metrics):
        def __init__(self) -> None:
            self.reasons: list[str] = []

        def refused(self, reason: str) -> None:  # type: ignore[override]
            self.reasons.append(reason)

    counted = Refusals()
    middleware = wsgi_t.by_cookie(wsgi_t.hello, max_waiters=0, metrics=counted)
    first = wsgi_t.holding(middleware, f"sid={SID}")
    assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == 429
    first.close()
    assert counted.reasons == ["queue_full"]


def test_no_label_carries_a_session_or_a_path(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    middleware = wsgi_t.by_cookie(wsgi_t.hello, timeout=0.01, metrics=metrics)
    first = wsgi_t.holding(middleware, f"sid={SID}")
    wsgi_t.call(middleware, wsgi_t.environ_for("/a-path", cookie=f"sid={SID}"))
    first.close()
    exported = generate_latest(registry).decode()
    assert 'outcome="timeout"' in exported
    digest = wsgi_t.hashed(middleware, SID)
    for secret in (SID, digest[:12], "/a-path"):
        assert secret not in exported


# -- OpenTelemetry --------------------------------------------------------------------------


def test_a_wait_is_on_the_recording_span() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    middleware = wsgi_t.by_cookie(wsgi_t.hello)  # no metrics: the span needs none
    gate = wsgi_t.observed(middleware)
    first = wsgi_t.holding(middleware, f"sid={SID}")

    def traced(name: str) -> Any:
        with tracer.start_as_current_span(name):
            return wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}"))

    thread, out = wsgi_t.in_thread(lambda: traced("waiter"))
    gate.wait_for(lambda: gate.queued == 1)
    first.close()
    thread.join(WAIT)
    assert out[0].code == 200
    assert traced("uncontended").code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    waited = spans["waiter"].attributes["sessionlock.wait_seconds"]
    assert isinstance(waited, float)
    assert waited > 0
    assert [event.name for event in spans["waiter"].events] == ["sessionlock.acquired"]
    assert "sessionlock.wait_seconds" not in spans["uncontended"].attributes
    provider.shutdown()


def test_metrics_are_safe_to_share_between_threads(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    """Eight threads, two sessions, one layer: every request counted once."""
    middleware = wsgi_t.by_cookie(wsgi_t.hello, metrics=metrics, timeout=None, max_waiters=64)
    start = threading.Barrier(8)

    def client(number: int) -> None:
        start.wait(WAIT)
        for _ in range(25):
            cookie = f"sid={SID}-{number % 2}"
            assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=cookie)).code == 200

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert requests(registry)["served"] == 200
    assert value(registry, "waiting") == 0
    assert value(registry, "wait_seconds_count") <= 200


# -- docs/metrics.md: its code, run as written -----------------------------------------------


def test_the_docs_turning_it_on_block_wraps_with_the_default_prometheus_metrics() -> None:
    from sessionlock.prometheus import default as default_metrics
    from tests.e2e import readme

    source = readme.find(readme.METRICS_ON).source
    namespace: dict[str, Any] = {"app": wsgi_t.hello}
    exec(compile(source, "docs/metrics.md", "exec"), namespace)  # a second run too: no clash
    exec(compile(source, "docs/metrics.md", "exec"), {"app": wsgi_t.hello})
    assert namespace["app"].core.metrics is default_metrics()


def test_the_docs_statsd_example_counts_through_its_client() -> None:
    from tests.e2e import readme

    class Client:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str, float]] = []

        def timing(self, name: str, ms: float) -> None:
            self.sent.append(("timing", name, ms))

        def incr(self, name: str) -> None:
            self.sent.append(("incr", name, 1))

    client = Client()
    namespace: dict[str, Any] = {
        "app": wsgi_t.hello,
        "statsd_client": client,
        "SessionLockMiddleware": lambda app, **options: wsgi_t.by_cookie(app, **options),
    }
    source = readme.find(readme.METRICS_STATSD).source
    exec(compile(source, "docs/metrics.md", "exec"), namespace)
    middleware = namespace["app"]
    middleware.core.timeout = 0.01
    first = wsgi_t.holding(middleware, f"sid={SID}")
    try:
        assert wsgi_t.call(middleware, wsgi_t.environ_for(cookie=f"sid={SID}")).code == 503
    finally:
        first.close()
    assert client.sent == [("incr", "sessionlock.refused.timeout", 1)]


def test_the_start_up_line_says_whether_metrics_are_on(registry: CollectorRegistry) -> None:
    assert Core(backend="memory://").describe().endswith("; metrics: off")
    core = Core(backend="memory://", metrics=PrometheusMetrics(registry))
    assert core.describe().endswith("; metrics: PrometheusMetrics")
