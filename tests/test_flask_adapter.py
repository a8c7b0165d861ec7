"""Flask adapter: the lock wraps wsgi_app; the rules run last, before Flask saves the session.

Requests use ``buffered=True`` so the test client closes each response (releasing the lock),
as a real server does.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask, Response, session

from sessionlock.errors import ConfigurationError
from sessionlock.flask import SessionLock
from sessionlock.options import NAMES
from sessionlock.rules import Ruleset, index_within, required
from sessionlock.stale import StalePages
from sessionlock.wsgi import SessionLockMiddleware

RULES = [required("t", "basic"), index_within("i", "ids")]


def make_app(**kwargs: Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = "flask-adapter-test-secret-0123456789"

    @app.get("/write")
    def write() -> str:
        session["ids"] = [1, 2, 3]
        session["i"] = 9
        return "written"

    @app.get("/read")
    def read() -> str:
        return str(session.get("i"))

    @app.get("/none")
    def none() -> str:
        return "no session use"

    kwargs.setdefault("backend", "memory://")
    SessionLock(app, **kwargs)
    return app


def cookie_session(app: Flask, client: Any) -> dict[str, Any]:
    cookie = client.get_cookie("session")
    assert cookie is not None
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return dict(serializer.loads(cookie.value))


def test_lock_wraps_wsgi_app() -> None:
    app = make_app(rules=RULES)
    assert isinstance(app.wsgi_app, SessionLockMiddleware)
    assert app.extensions["sessionlock"] is app.wsgi_app


def test_repair_is_in_the_cookie_that_goes_out(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(rules=RULES)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        response = client.get("/write", buffered=True)
    assert response.status_code == 200
    assert cookie_session(app, client) == {"ids": [1, 2, 3], "i": 2, "t": "basic"}
    assert "X-Session-Repaired" not in response.headers  # off by default
    assert {r.sessionlock_rule for r in caplog.records} == {"required:t", "index_within:i"}


def test_control_without_rules_the_corruption_goes_out() -> None:
    app = make_app()
    client = app.test_client()
    client.get("/write", buffered=True)
    assert cookie_session(app, client) == {"ids": [1, 2, 3], "i": 9}


def test_rules_run_after_the_apps_own_after_request() -> None:
    app = make_app(rules=RULES)

    @app.after_request
    def late_corruption(response: Response) -> Response:
        if "ids" in session:
            session["i"] = 50
        return response

    client = app.test_client()
    client.get("/write", buffered=True)
    assert cookie_session(app, client)["i"] == 2


def test_header_names_the_rules_that_fired_when_enabled() -> None:
    app = make_app(rules=Ruleset(RULES, header="X-Session-Repaired"))
    response = app.test_client().get("/write", buffered=True)
    assert response.headers["X-Session-Repaired"] == "required:t, index_within:i"


def test_unaccessed_session_is_neither_read_nor_varied() -> None:
    app = make_app(rules=RULES)
    client = app.test_client()
    client.get("/write", buffered=True)
    response = client.get("/none", buffered=True)
    assert "Cookie" not in response.headers.get("Vary", "")
    assert not any(h.startswith("session=") for h in response.headers.getlist("Set-Cookie"))


def test_valid_session_is_not_rewritten() -> None:
    app = make_app(rules=RULES)
    client = app.test_client()
    client.get("/write", buffered=True)  # repaired once
    response = client.get("/read", buffered=True)
    assert response.text == "2"
    assert not any(h.startswith("session=") for h in response.headers.getlist("Set-Cookie"))


def test_no_secret_key_means_no_session_and_no_error() -> None:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    SessionLock(app, rules=RULES, backend="memory://")
    assert app.test_client().get("/", buffered=True).status_code == 200


def test_init_app_factory_form_and_double_init() -> None:
    lock = SessionLock(rules=RULES, backend="memory://")
    app = Flask(__name__)
    lock.init_app(app)
    assert isinstance(app.wsgi_app, SessionLockMiddleware)
    with pytest.raises(RuntimeError):
        lock.init_app(app)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"timout": 5},
            "unknown option 'timout' (did you mean 'timeout'?) for SessionLock; known: "
            "backend, cookie_session, exempt, key, max_waiters, max_waiting_threads, metrics, "
            "on_backend_error, release, rules, secret, shared, stale_pages, timeout",
            id="option-typo",
        ),
        pytest.param({"rule": RULES}, "'rule' (did you mean 'rules'?)", id="rules-typo"),
        pytest.param(
            {"backend": "memory://", "bogus": 1}, "unknown option 'bogus' for Sess", id="other"
        ),
    ],
)
def test_an_unknown_option_is_refused_when_made_with_the_known_ones(
    options: dict[str, Any], message: str
) -> None:
    # Without an app (the factory form): refused at once, not at init_app.
    with pytest.raises(ConfigurationError) as raised:
        SessionLock(**options)
    assert message in str(raised.value)
    assert "Core" not in str(raised.value)


def test_every_option_reaches_the_middleware() -> None:
    options: dict[str, Any] = {
        "backend": "memory://",
        "key": "identity",
        "timeout": 3.0,
        "max_waiters": 2,
        "max_waiting_threads": 1,
        "exempt": ["/static/"],
        "secret": "s" * 16,
        "cookie_session": "session",
        "release": "end",
        "on_backend_error": "open",
        "stale_pages": StalePages(policy="flag"),
        "shared": ["GET"],
        "metrics": "prometheus",
    }
    assert set(options) == set(NAMES)  # an option added to the middleware is listed here
    app = Flask(__name__)
    SessionLock(app, **options)
    core = app.extensions["sessionlock"].core
    assert (core.timeout, core.max_waiters, core.max_waiting_threads) == (3.0, 2, 1)
    assert core.cookies is not None
    assert not core.release_at_head
    assert core.fail_open
    assert core.revisions is not None
    assert core.revisions.pages is options["stale_pages"]
    assert type(core.metrics).__name__ == "PrometheusMetrics"
