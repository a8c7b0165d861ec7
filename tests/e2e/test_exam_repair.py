"""End to end: the seed's exam app, corrupted the seed's way, repaired before the session is saved.

Real servers (gunicorn, uvicorn) on loopback ports, real frameworks' default sessions:
Flask's and Starlette's signed cookies (decoded here with the app's own serializer) and
Django's database sessions (sqlite in a temporary directory, read back here). Each scenario
has its control: the same app without the rules sends the corruption out.

Scenarios: "next" clicked past the last question (the seed's "question 4 of 3"); a handler
that leaves the index past the end and drops ``selected_question_type``; and (cookie
sessions) a session corrupted before the deploy, arriving in the cookie.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from base64 import b64decode, b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import itsdangerous
import pytest

from tests.e2e import exam_app
from tests.e2e.servers import ROOT, gunicorn, running_server, uvicorn

pytestmark = pytest.mark.e2e

IDS = [101, 102, 103]
Decoder = Callable[[httpx.Client, httpx.Response], dict[str, Any]]


def flask_decode(client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    app = exam_app.flask_app(rules=None)
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return dict(serializer.loads(response.cookies["session"]))


def flask_encode(session: dict[str, Any]) -> str:
    app = exam_app.flask_app(rules=None)
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return str(serializer.dumps(session))


def starlette_decode(client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    raw = response.cookies["session"].encode()
    data = itsdangerous.TimestampSigner(exam_app.SECRET).unsign(raw)
    return dict(json.loads(b64decode(data)))


def starlette_encode(session: dict[str, Any]) -> str:
    data = b64encode(json.dumps(session).encode())
    return itsdangerous.TimestampSigner(exam_app.SECRET).sign(data).decode()


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("django") / "db.sqlite3"
    env = {**os.environ, **django_env(db, "good")}
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    return db


def django_env(
    db: Path, order: str, rules: str = "tests.e2e.exam_app.EXAM_RULES"
) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "SESSIONLOCK_TEST_DB": str(db),
        "SESSIONLOCK_TEST_ORDER": order,
        "SESSIONLOCK_TEST_RULES": rules,
        "PYTHONPATH": str(ROOT),
    }


def django_decoder(db: Path) -> Decoder:
    from django.core import signing

    from tests.django_project import settings

    def decode(client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
        key = client.cookies["sessionid"]
        with sqlite3.connect(db) as connection:
            (data,) = connection.execute(
                "SELECT session_data FROM django_session WHERE session_key = ?", (key,)
            ).fetchone()
        return dict(
            signing.loads(
                data,
                key=settings.SECRET_KEY,
                salt="django.contrib.sessions.SessionStore",
                serializer=signing.JSONSerializer,
                fallback_keys=[],
            )
        )

    return decode


def play(base_url: str, decode: Decoder) -> dict[str, dict[str, Any]]:
    """The seed's failures, one after another; the saved session after each."""
    seen: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.post("/start/3").text == "question 1 of 3"
        for _ in range(3):  # one click too many: the seed's "question 4 of 3"
            response = client.post("/next")
        seen["next-past-the-end"] = decode(client, response)
        assert client.get("/question").status_code == 200
        response = client.post("/corrupt")  # index far past the end, type dropped
        seen["corrupt-handler"] = decode(client, response)
        seen["page-after"] = {"text": client.get("/question").text}
    return seen


def assert_repaired(seen: dict[str, dict[str, Any]]) -> None:
    for scenario in ("next-past-the-end", "corrupt-handler"):
        session = seen[scenario]
        assert session["exam_question_ids"] == IDS, scenario
        assert session["exam_current"] == 2, scenario
        assert session["selected_question_type"] == "basic", scenario
        assert session["progress_tracking"]["current_question"] == 2, scenario
    assert seen["page-after"]["text"] == "question 3 of 3"


def assert_corrupted(seen: dict[str, dict[str, Any]]) -> None:
    assert seen["next-past-the-end"]["exam_current"] == 3
    assert seen["corrupt-handler"]["exam_current"] == 6
    assert "selected_question_type" not in seen["corrupt-handler"]
    assert seen["page-after"]["text"] == "question 7 of 3"


# -- Flask (gunicorn) and Starlette (uvicorn): signed-cookie sessions --------------------

COOKIE_APPS = [
    pytest.param(
        gunicorn("tests.e2e.exam_app:flask_app()", "--threads", "4"),
        gunicorn("tests.e2e.exam_app:flask_app_unguarded()", "--threads", "4"),
        flask_decode,
        flask_encode,
        id="flask-gunicorn",
    ),
    pytest.param(
        uvicorn("tests.e2e.exam_app:starlette_app", "--factory"),
        uvicorn("tests.e2e.exam_app:starlette_app_unguarded", "--factory"),
        starlette_decode,
        starlette_encode,
        id="starlette-uvicorn",
    ),
]


@pytest.mark.parametrize(("guarded", "control", "decode", "encode"), COOKIE_APPS)
def test_cookie_session_repaired_before_the_cookie_goes_out(
    guarded: list[str], control: list[str], decode: Decoder, encode: Any
) -> None:
    with running_server(guarded) as (base_url, _):
        assert_repaired(play(base_url, decode))
    with running_server(control) as (base_url, _):
        assert_corrupted(play(base_url, decode))


@pytest.mark.parametrize(("guarded", "control", "decode", "encode"), COOKIE_APPS)
def test_cookie_corrupted_before_the_deploy_is_repaired_on_first_use(
    guarded: list[str], control: list[str], decode: Decoder, encode: Callable[[Any], str]
) -> None:
    old = {"exam_question_ids": IDS, "exam_current": 10, "s_start": 1}
    with running_server(guarded) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        response = client.get("/question", headers={"Cookie": f"session={encode(old)}"})
        repaired = decode(client, response)
        again = client.get("/question")
    assert response.headers["x-session-repaired"] == (
        "index_within:exam_current, required:selected_question_type"
    )
    assert repaired == {**old, "exam_current": 2, "selected_question_type": "basic"}
    assert again.text == "question 3 of 3"
    assert "x-session-repaired" not in again.headers
    with running_server(control) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        response = client.get("/question", headers={"Cookie": f"session={encode(old)}"})
    assert "session=" not in response.headers.get("set-cookie", "")  # nothing repaired
    assert response.text == "question 11 of 3"


# -- Django: database sessions, sync (gunicorn, WSGI) and async (uvicorn, ASGI) ----------

DJANGO_SERVERS = [
    pytest.param(gunicorn("tests.django_project.wsgi:application", "--threads", "4"), id="wsgi"),
    pytest.param(uvicorn("tests.django_project.wsgi:asgi_application"), id="asgi"),
]


@pytest.mark.parametrize("server", DJANGO_SERVERS)
def test_django_database_session_repaired_before_save(server: list[str], django_db: Path) -> None:
    decode = django_decoder(django_db)
    with running_server(server, env=django_env(django_db, "good")) as (base_url, _):
        assert_repaired(play(base_url, decode))
    # The control: the same project with an empty rule list.
    env = django_env(django_db, "good", rules="tests.e2e.test_exam_repair.NO_RULES")
    with running_server(server, env=env) as (base_url, _):
        assert_corrupted(play(base_url, decode))


NO_RULES: list[Any] = []
