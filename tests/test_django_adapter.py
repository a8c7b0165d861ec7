"""Django adapter: system checks by id, misorder logged at runtime, the lock held across save,
the lock built when Django loads it (never at a request on the event loop).

Django is configured once per process, so the checks and the servers run the test project
(tests/django_project) in a subprocess: ``manage.py check`` for the checks, a real server
(gunicorn: sync middleware; uvicorn: async) for the rest. When the lock is built is seen
in-process, on the same project settings.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionlock.core import Core
from sessionlock.errors import ConfigurationError
from sessionlock.options import NAMES
from sessionlock.stale import StalePages
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


# -- in-process: when the middleware builds its lock --------------------------------------


@pytest.fixture(scope="module")
def configured() -> None:
    """The test project's settings in this process (Django is configured once per process)."""
    import django
    from django.conf import settings

    if not settings.configured:
        module = importlib.import_module("tests.django_project.settings")
        settings.configure(
            **{name: getattr(module, name) for name in dir(module) if name.isupper()}
        )
        django.setup()


@pytest.fixture
def builds(configured: None, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each Core the Django middleware builds: whether an event loop ran on its thread."""
    import sessionlock.django

    made: list[bool] = []

    class Recorded(Core):
        def __init__(self, **options: Any) -> None:
            made.append(asyncio._get_running_loop() is not None)
            super().__init__(**options)

    monkeypatch.setattr(sessionlock.django, "Core", Recorded)
    return made


def _request(cookie: str = "sessionid", value: str = "abc") -> Any:
    from django.test import AsyncRequestFactory

    factory = AsyncRequestFactory()
    factory.cookies[cookie] = value
    return factory.get("/")


async def _view(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


def _served(response: Any) -> bool:
    return "sessionlock" in response.get("Server-Timing", "")


@pytest.mark.usefixtures("registry", "no_blocking")
def test_the_lock_is_built_at_load_never_on_the_event_loop(
    builds: list[bool], tmp_path: Path
) -> None:
    """Under ASGI the first request runs on the loop: the backend (mkdir, open, a directory
    sweep) must be ready by then. blockbuster flags a build there (os.path.abspath first)."""
    from django.test import override_settings

    from sessionlock.django import SessionLockMiddleware

    setting = {"backend": f"file://{tmp_path / 'locks'}", "key": "cookie:sessionid"}
    with override_settings(SESSIONLOCK=setting):
        middleware = SessionLockMiddleware(_view)  # what Django's handler load does
        assert builds == [False]

        async def requests() -> list[Any]:
            return [await middleware(_request()) for _ in range(3)]

        responses = asyncio.run(requests())
    assert all(_served(response) for response in responses)
    assert builds == [False]  # no second build, none on the loop


@pytest.mark.usefixtures("registry")
def test_override_settings_of_sessionlock_still_takes_effect(builds: list[bool]) -> None:
    from django.test import override_settings

    from sessionlock.django import SessionLockMiddleware

    middleware = SessionLockMiddleware(_view)  # the project's SESSIONLOCK: memory://

    def served() -> bool:
        return _served(asyncio.run(middleware(_request())))

    assert served()
    with override_settings(SESSIONLOCK={"backend": "memory://", "exempt": ["GET"]}):
        assert not served()  # the override's exemption applies
    assert served()  # and is gone with it
    assert builds == [False, True, True]  # built at load; rebuilt as the setting changed


@pytest.mark.usefixtures("registry")
def test_without_a_sessionlock_setting_the_lock_is_built_once(builds: list[bool]) -> None:
    """An absent setting must not read as a new one at each request (a rebuild each time)."""
    from django.conf import settings
    from django.test import override_settings

    from sessionlock.django import SessionLockMiddleware

    with override_settings():
        del settings.SESSIONLOCK
        middleware = SessionLockMiddleware(_view)
        for _ in range(3):
            assert _served(asyncio.run(middleware(_request())))
    assert builds == [False]


@pytest.mark.usefixtures("configured")
def test_a_bad_setting_fails_when_django_loads_the_middleware() -> None:
    from django.test import override_settings

    from sessionlock.django import SessionLockMiddleware, SessionRulesMiddleware

    with override_settings(SESSIONLOCK={"bogus": 1}):
        for middleware in (SessionLockMiddleware, SessionRulesMiddleware):
            with pytest.raises(ConfigurationError, match="unknown option 'bogus' for the SESSIO"):
                middleware(_view)


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        pytest.param(
            {"timout": 5},
            "unknown option 'timout' (did you mean 'timeout'?) for the SESSIONLOCK setting; "
            "known: backend, cookie_session, exempt, key, max_waiters, max_waiting_threads, "
            "metrics, on_backend_error, release, rules, secret, shared, stale_pages, timeout",
            id="option-typo",
        ),
        pytest.param({"rule": []}, "'rule' (did you mean 'rules'?)", id="rules-typo"),
        pytest.param({3: 1}, "unknown option 3 for the SESSIONLOCK setting", id="not-a-name"),
    ],
)
def test_an_unknown_setting_key_is_refused_with_the_known_ones(
    setting: dict[Any, Any], message: str
) -> None:
    from django.test import override_settings

    from sessionlock.django import SessionLockMiddleware

    with override_settings(SESSIONLOCK=setting), pytest.raises(ConfigurationError) as raised:
        SessionLockMiddleware(_view)
    assert message in str(raised.value)
    assert "Core" not in str(raised.value)


@pytest.mark.usefixtures("configured")
def test_every_middleware_option_is_a_setting_key() -> None:
    """An option added to the middleware is taken by SESSIONLOCK too."""
    from django.test import override_settings

    from sessionlock.django import SessionLockMiddleware

    setting = {"backend": "memory://", "timeout": None, "max_waiters": 3, "exempt": ["/s/"]}
    setting |= {"max_waiting_threads": 2, "secret": "s" * 16, "release": "end"}
    setting |= {"key": "cookie:sessionid", "cookie_session": None, "rules": []}
    setting |= {"on_backend_error": "open", "stale_pages": StalePages(policy="flag")}
    setting |= {"shared": ["GET"], "metrics": "prometheus"}
    assert set(setting) - {"rules"} == set(NAMES)  # every one of them
    with override_settings(SESSIONLOCK=setting):
        core = SessionLockMiddleware(_view)._core.get()
    assert (core.timeout, core.max_waiters, core.max_waiting_threads) == (None, 3, 2)
    assert not core.release_at_head
    assert core.fail_open
    assert core.revisions is not None
    assert core.revisions.pages is setting["stale_pages"]
    assert type(core.metrics).__name__ == "PrometheusMetrics"


@pytest.mark.usefixtures("registry", "configured")
@pytest.mark.parametrize(
    "early", [pytest.param(True, id="early"), pytest.param(False, id="control")]
)
def test_a_view_can_release_its_session_early(early: bool) -> None:
    """``sessionlock.release_session(request)`` in a view: the session is free before it returns."""
    from django.http import HttpResponse

    from sessionlock import release_session
    from sessionlock.django import SessionLockMiddleware

    held_in_view: list[bool] = []

    async def view(request: Any) -> Any:
        if early:
            assert release_session(request)
        held_in_view.append(len(middleware._core.get().queue) == 1)
        return HttpResponse("ok")

    middleware = SessionLockMiddleware(view)
    response = asyncio.run(middleware(_request()))
    assert _served(response)
    assert held_in_view == [not early]
    assert len(middleware._core.get().queue) == 0
