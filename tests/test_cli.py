"""The command line: ``sessionlock --version``, ``check`` on real apps, ``held`` on real
backends (a lease held and a waiter queued by this test, read by the command in a
subprocess)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionlock.backends import file as file_backend
from sessionlock.backends.base import Backend, HeldKey, Lease
from sessionlock.backends.file import FileBackend
from sessionlock.backends.redis import RedisBackend
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # seconds a waiter waits for its lease, at most
RAW_ID = "sid-raw-session-id"
KEY = hashlib.sha256(RAW_ID.encode()).hexdigest()  # a digest, as Core hands backends


def sessionlock(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m sessionlock ARGS`` from the worktree, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "sessionlock", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_version_is_the_installed_distributions() -> None:
    done = sessionlock("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sessionlock {importlib.metadata.version('sessionlock')}"


# -- check -----------------------------------------------------------------------------------


def test_check_a_wrapped_flask_app_prints_its_configuration(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    done = sessionlock("check", "tests.cli_apps:flask_app", CLI_APPS_BACKEND=f"file://{locks}")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "app tests.cli_apps:flask_app (Flask)" in out
    assert "lock 1 at app.wsgi_app (sessionlock.wsgi.SessionLockMiddleware)" in out
    assert f"backend file://{locks} (shared by this host's processes)" in out
    assert "tracked cookie sessions: session" in out
    assert "problems: none" in out


def test_check_takes_a_factory_call_as_gunicorn_does() -> None:
    done = sessionlock("check", "tests.cli_apps:create_flask('session')")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lock 1 at app.wsgi_app" in done.stdout
    assert "memory:// serializes the requests of one process only" in done.stdout  # a note


def test_check_a_starlette_app_finds_the_lock_in_its_middleware_stack() -> None:
    done = sessionlock("check", "tests.cli_apps:starlette_app")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "lock 1 at app.middleware_stack.app (sessionlock.asgi.SessionLockMiddleware)" in out
    # The chain shows the lock outside Starlette's SessionMiddleware.
    assert out.index("SessionLockMiddleware") < out.index(": SessionMiddleware")
    assert "problems: none" in out


def test_check_a_fastapi_app_built_with_add_middleware() -> None:
    done = sessionlock("check", "tests.cli_apps:fastapi_app")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "app tests.cli_apps:fastapi_app (FastAPI)" in done.stdout
    # FastAPI adds middleware of its own around the user's: the lock is among them.
    assert re.search(
        r"^lock 1 at app\.middleware_stack[.a-z_]* \(sessionlock\.asgi", done.stdout, re.M
    )
    assert done.stdout.index(": SessionLockMiddleware") < done.stdout.index(": SessionMiddleware")
    assert "problems: none" in done.stdout


def test_check_an_asgi_app_wrapped_whole_reports_its_untracked_session() -> None:
    # cookie_session=None: Starlette's "session" cookie, inside the lock, is not tracked.
    done = sessionlock("check", "tests.cli_apps:starlette_wrapped")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "lock 1 at app (sessionlock.asgi.SessionLockMiddleware)" in done.stdout
    assert "tracked cookie sessions: none" in done.stdout
    assert "Starlette's SessionMiddleware (the signed cookie 'session') is not tracked" in (
        done.stdout
    )


def test_check_reports_a_session_layer_outside_the_lock() -> None:
    done = sessionlock("check", "tests.cli_apps:starlette_misordered")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Starlette's SessionMiddleware is outside the lock" in done.stdout


def test_check_reports_a_signed_cookie_session_the_lock_does_not_track() -> None:
    done = sessionlock("check", "tests.cli_apps:flask_untracked")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "(the signed cookie 'myapp_session') is not tracked by the lock" in done.stdout
    assert "cookie_session='myapp_session'" in done.stdout


@pytest.mark.parametrize(
    ("order", "status", "found"),
    [("good", 0, "problems: none"), ("lock-after", 1, "sessionlock.E001: SessionLockMiddleware")],
)
def test_check_a_django_project_reads_its_settings(order: str, status: int, found: str) -> None:
    done = sessionlock(
        "check", "tests.django_project.wsgi:application", SESSIONLOCK_TEST_ORDER=order
    )
    assert done.returncode == status, done.stdout + done.stderr
    assert "lock 1 at settings.MIDDLEWARE (sessionlock.django.SessionLockMiddleware)" in (
        done.stdout
    )
    assert "key cookie('sessionid')" in done.stdout
    assert found in done.stdout


def test_check_an_unwrapped_app_finds_no_lock() -> None:
    done = sessionlock("check", "tests.cli_apps:flask_bare")
    assert done.returncode == 2
    assert "no SessionLockMiddleware found in tests.cli_apps:flask_bare" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.no_such_module:app", "cannot import 'tests.no_such_module'"),
        ("tests.cli_apps:no_such_app", "'tests.cli_apps' has no 'no_such_app'"),
        ("tests.cli_apps:create_flask(print)", "only literal arguments"),
    ],
)
def test_check_a_bad_app_path_says_why_without_a_traceback(spec: str, message: str) -> None:
    done = sessionlock("check", spec)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# -- held ------------------------------------------------------------------------------------


@contextlib.contextmanager
def holding_and_queued(
    holder: Backend, waiter: Backend, listed: Callable[[], list[HeldKey]]
) -> Iterator[None]:
    """While inside: ``holder`` holds KEY and ``waiter`` waits for it in a daemon thread,
    queued in the backend (as ``listed`` shows: polled until it does)."""
    lease = holder.try_acquire(KEY)
    assert lease is not None
    got: list[Lease | None] = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire(KEY, WAIT)), daemon=True)
    thread.start()
    try:
        queued = threading.Event()
        for _ in range(int(WAIT / 0.02)):
            if [item.queued for item in listed()] == [1]:
                queued.set()
                break
            queued.wait(0.02)
        assert queued.is_set(), listed()
        yield
    finally:
        holder.release(lease)
        thread.join(WAIT)
        if got and got[0] is not None:
            waiter.release(got[0])
    assert got  # the waiter was really in line for the lease, and got it
    assert got[0] is not None


def test_held_lists_a_file_backends_held_key_and_its_waiter(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/locks"
    holder, waiter = FileBackend(tmp_path / "locks"), FileBackend(tmp_path / "locks")
    try:
        with holding_and_queued(holder, waiter, lambda: file_backend.held_keys(url)):
            done = sessionlock("held", url)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[0].split() == ["KEY", "(keyed", "hash)", "HELD", "READERS", "QUEUED"]
            assert lines[1].split() == [KEY, "exclusive", "-", "1"]
            assert lines[2].startswith("1 held, 1 queued")
            assert RAW_ID not in done.stdout
        done = sessionlock("held", url)  # the control: all released
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "no session held, nobody queued"
    finally:
        holder.close()
        waiter.close()


def test_held_shows_readers_of_a_file_backend_as_shared(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/locks"
    readers = [FileBackend(tmp_path / "locks") for _ in range(2)]
    leases = [backend.try_acquire(KEY, shared=True) for backend in readers]
    try:
        assert all(leases)
        assert file_backend.held_keys(url) == [HeldKey(KEY, "shared", None, 0)]
    finally:
        for backend, lease in zip(readers, leases, strict=True):
            if lease is not None:
                backend.release(lease)
            backend.close()


def test_held_lists_a_redis_backends_held_key_and_its_waiter(redis_server: RedisServer) -> None:
    holder, waiter = RedisBackend(redis_server.url), RedisBackend(redis_server.url)
    try:
        with holding_and_queued(holder, waiter, holder.held_keys):
            done = sessionlock("held", redis_server.url)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[1].split() == [KEY, "exclusive", "0", "1"]
            assert lines[2].startswith("1 held, 1 queued")
        readers = [holder.try_acquire(KEY, shared=True), waiter.try_acquire(KEY, shared=True)]
        try:
            assert holder.held_keys() == [HeldKey(KEY, "shared", 2, 0)]
        finally:
            for backend, lease in zip((holder, waiter), readers, strict=True):
                if lease is not None:
                    backend.release(lease)
        done = sessionlock("held", redis_server.url)  # the control: all released
        assert done.stdout.strip() == "no session held, nobody queued"
    finally:
        holder.close()
        waiter.close()


def test_held_on_memory_says_it_is_per_process() -> None:
    done = sessionlock("held", "memory://")
    assert done.returncode == 2
    assert "memory:// keeps its locks inside each process" in done.stderr


def test_held_on_a_missing_directory_or_an_unknown_scheme_exits_2(tmp_path: Path) -> None:
    missing = sessionlock("held", f"file://{tmp_path}/missing")
    assert missing.returncode == 2
    assert "is not usable" in missing.stderr
    unknown = sessionlock("held", "ftp://example")
    assert unknown.returncode == 2
    assert "not a backend URL" in unknown.stderr
