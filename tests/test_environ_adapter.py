"""Environ adapter with real Beaker: rules run before Beaker saves; misorder is reported."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client

from sessionlock.environ import SessionRulesMiddleware
from sessionlock.rules import index_within, required
from sessionlock.wsgi import SessionLockMiddleware

beaker_middleware = pytest.importorskip("beaker.middleware")

RULES = [required("t", "basic"), index_within("i", "ids")]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    session = environ["beaker.session"]
    if environ["PATH_INFO"] == "/write":
        session["ids"] = [1, 2, 3]
        session["i"] = 9
        session.save()
        body = b"written"
    else:
        body = repr({k: session.get(k) for k in ("ids", "i", "t")}).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def stack(*, rules: bool, lock_outside: bool = True) -> Any:
    inner: Any = SessionRulesMiddleware(app, rules=RULES) if rules else app
    options = {"session.type": "memory", "session.key": "beaker"}
    if lock_outside:
        return SessionLockMiddleware(
            beaker_middleware.SessionMiddleware(inner, options), backend="memory://"
        )
    return beaker_middleware.SessionMiddleware(
        SessionLockMiddleware(inner, backend="memory://"), options
    )


def test_repair_is_saved_by_beaker() -> None:
    client = Client(stack(rules=True))
    client.get("/write", buffered=True)
    assert client.get("/read", buffered=True).text == "{'ids': [1, 2, 3], 'i': 2, 't': 'basic'}"


def test_control_without_rules_the_corruption_is_saved() -> None:
    client = Client(stack(rules=False))
    client.get("/write", buffered=True)
    assert client.get("/read", buffered=True).text == "{'ids': [1, 2, 3], 'i': 9, 't': None}"


def test_lock_inside_beaker_is_detected(caplog: pytest.LogCaptureFixture) -> None:
    client = Client(stack(rules=True, lock_outside=False))
    with caplog.at_level(logging.ERROR, logger="sessionlock"):
        client.get("/write", buffered=True)
        client.get("/read", buffered=True)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "environ['beaker.session']" in errors[0]


def test_rules_outside_the_session_layer_report(caplog: pytest.LogCaptureFixture) -> None:
    wrapped = SessionRulesMiddleware(beaker_middleware.SessionMiddleware(app, {}), rules=RULES)
    with caplog.at_level(logging.ERROR, logger="sessionlock"):
        Client(wrapped).get("/read", buffered=True)
    assert "found no environ['beaker.session']" in caplog.text
