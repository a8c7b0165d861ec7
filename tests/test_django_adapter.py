"""Django adapter: system checks by id, misorder logged at runtime, the lock held across save.

Django is configured once per process, so each case runs the test project
(tests/django_project) in its own subprocess: ``manage.py check`` for the checks, a real
server (gunicorn: sync middleware; uvicorn: async) for the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import ROOT, gunicorn, running_server, uvicorn


def project_env(db: Path, order: str = "good", **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "SESSIONLOCK_TEST_DB": str(db),
        "SESSIONLOCK_TEST_ORDER": order,
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def django(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env={**os.environ, **project_env(db, **env)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("django-adapter") / "db.sqlite3"
    result = django(path, "migrate", "-v0")
    assert result.returncode == 0, result.stderr
    return path


ENGINE = "SESSIONLOCK_TEST_ENGINE"
SIGNED = "django.contrib.sessions.backends.signed_cookies"


@pytest.mark.parametrize(
    ("env", "ids"),
    [
        pytest.param({}, set(), id="good-order-clean"),
        pytest.param({"order": "lock-after"}, {"sessionlock.E001"}, id="E001-lock-after-session"),
        pytest.param({"order": "rules-before"}, {"sessionlock.E002"}, id="E002-rules-before"),
        pytest.param({"order": "no-session"}, {"sessionlock.E003"}, id="E003-no-session"),
        pytest.param(
            {"SESSIONLOCK_TEST_BAD_SETTING": "1"}, {"sessionlock.E004"}, id="E004-bad-setting"
        ),
        pytest.param(
            {"SESSIONLOCK_TEST_RULES": "tests.nowhere.RULES"},
            {"sessionlock.E004"},
            id="E004-rules-path",
        ),
        pytest.param({ENGINE: SIGNED}, {"sessionlock.W001"}, id="W001-signed-cookies"),
        pytest.param(
            {"SESSIONLOCK_TEST_RULES": "tests.e2e.test_exam_repair.NO_RULES"},
            {"sessionlock.W002"},
            id="W002-no-rules",
        ),
    ],
)
def test_system_checks_by_id(db: Path, env: dict[str, str], ids: set[str]) -> None:
    result = django(db, "check", "--fail-level", "CRITICAL", **env)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    found = {word.strip("():") for word in output.split() if word.startswith("(sessionlock.")}
    assert found == ids, output


SERVERS = [
    pytest.param(gunicorn("tests.django_project.wsgi:application", "--threads", "4"), id="sync"),
    pytest.param(uvicorn("tests.django_project.wsgi:asgi_application"), id="async"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("order", "message"),
    [
        pytest.param("lock-after", "runs after SessionMiddleware", id="lock-after"),
        pytest.param("rules-before", "found no request.session", id="rules-before"),
    ],
)
def test_misorder_is_logged_once_at_runtime(
    db: Path, server: list[str], order: str, message: str
) -> None:
    with running_server(server, env=project_env(db, order)) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/start/2").status_code == 200
        log = Path(ROOT / ".pytest_cache" / f"server-{url.rsplit(':', 1)[1]}.log")
        text = log.read_text()
    assert text.count(message) == 1, text


@pytest.mark.e2e
@pytest.mark.parametrize("server", SERVERS)
def test_lock_serializes_one_session_and_holds_across_save(db: Path, server: list[str]) -> None:
    """Concurrent "next" clicks of one session: with the lock every click counts.

    The control (no lock middleware) loses clicks: each handler reads exam_current, holds
    for a moment, and writes; requests that overlap read the same index. The hold widens
    that window; nothing here asserts on time.
    """
    clicks = 8

    def run(env: dict[str, str]) -> int:
        with (
            running_server(server, env=env) as (url, _),
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            client.post(f"/start/{clicks + 1}")
            barrier = threading.Barrier(clicks)

            def click() -> None:
                barrier.wait()
                assert client.post("/next?hold=0.2").status_code == 200

            threads = [threading.Thread(target=click) for _ in range(clicks)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            text = client.get("/question").text
        return int(text.split()[1]) - 1

    assert run(project_env(db)) == clicks
    assert run(project_env(db, "no-lock")) < clicks
