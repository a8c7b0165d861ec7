"""Several worker processes, one session: the file backend serializes them all.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_gunicorn_workers.py

gunicorn runs the counter app of :mod:`tests.e2e.apps` (a SQLite store shared by the
workers) with 4 worker processes, wrapped by ``sessionlock.gunicorn:wrap(...)`` (the
factory form) or by the ``post_worker_init`` hook of a ``gunicorn.conf.py``. Every run has
its control: the same clients against the bare app lose updates.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.apps import init_db, make_asgi_counter, read_stats
from tests.e2e.servers import BIN, ROOT, fetch, free_port, gunicorn, in_parallel, running_server

pytestmark = pytest.mark.e2e

CLIENTS = 8
INCREMENTS = 8
BARE = "tests.e2e.apps:wsgi_app"
BARE_ASGI = "tests.e2e.apps:asgi_app"
UVICORN_WORKER = "uvicorn_worker.UvicornWorker"  # uvicorn.workers is deprecated


# These tests are about serializing one session across workers under a burst of its own
# requests, not about fairness to other sessions (tests/e2e/test_fairness.py): they keep
# the waiting policy from before max_waiting_threads, so that every request waits its turn.
WAIT_ALL = 64


def factory(target: str, **options: object) -> str:
    """``sessionlock.gunicorn:wrap("target", option=literal, ...)`` for gunicorn's command line."""
    options.setdefault("max_waiting_threads", WAIT_ALL)
    arguments = "".join(f", {name}={value!r}" for name, value in options.items())
    return f"sessionlock.gunicorn:wrap({target!r}{arguments})"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "counters.db"
    init_db(path)
    return path


@pytest.fixture
def locks(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'locks'}"


def env_for(db: Path) -> dict[str, str]:
    # The app is loaded bare; the gunicorn integration under test does the wrapping.
    return {"SESSIONLOCK_TEST_DB": str(db), "SESSIONLOCK_TEST_WRAP": "0"}


def hammer(base_urls: list[str], sid: str) -> None:
    """CLIENTS threads, each INCREMENTS increments of one session, spread over the servers."""

    def client(number: int) -> Callable[[], None]:
        def run() -> None:
            for step in range(INCREMENTS):
                base_url = base_urls[(number + step) % len(base_urls)]
                status, body = fetch(base_url, "POST", "/incr", sid)
                assert status == 200, (status, body)

        return run

    in_parallel([client(n) for n in range(CLIENTS)])


def report(label: str, db: Path, sid: str) -> Any:
    stats = read_stats(db, sid)
    print(
        f"{label}: sent {stats.requests}, count {stats.count},"
        f" lost {CLIENTS * INCREMENTS - stats.count}, max in flight {stats.max_inflight}"
    )
    assert stats.requests == CLIENTS * INCREMENTS
    return stats


# -- 4 workers, no update lost ------------------------------------------------------------


def conf_file(tmp_path: Path, locks: str) -> str:
    """The config-file form: the hook wraps the app each worker loaded."""
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(
        "from sessionlock.gunicorn import post_worker_init as sessionlock_hook\n"
        f"wsgi_app = {BARE!r}\n"
        f"post_worker_init = sessionlock_hook(backend={locks!r}, key='cookie:sid',"
        f" max_waiting_threads={WAIT_ALL})\n"
    )
    return str(path)


FOUR_WORKERS = [
    pytest.param(("sync", "factory"), id="sync-factory"),
    pytest.param(("gthread", "factory"), id="gthread-factory"),
    pytest.param(("gthread", "conf"), id="gthread-conf"),
    pytest.param(("sync", "conf"), id="sync-conf"),
]


def four_workers(kind: str, form: str, tmp_path: Path, locks: str | None) -> list[str]:
    extra = ["--workers", "4", "--worker-class", kind, "--timeout", "120"]
    if kind == "gthread":
        extra += ["--threads", "4"]
    if locks is None:
        return gunicorn(BARE, *extra)
    if form == "conf":
        command = gunicorn("", "--config", conf_file(tmp_path, locks), *extra)
        return command[:-1]  # the app comes from the config file
    return gunicorn(factory(BARE, backend=locks, key="cookie:sid"), *extra)


@pytest.mark.parametrize("setup", FOUR_WORKERS)
def test_four_workers_lose_no_update(
    setup: tuple[str, str], tmp_path: Path, db: Path, locks: str
) -> None:
    kind, form = setup
    with running_server(four_workers(kind, form, tmp_path, locks), env=env_for(db)) as (url, _):
        sid = uuid.uuid4().hex
        hammer([url], sid)
    stats = report(f"gunicorn -w 4 {kind} {form}, file backend", db, sid)
    assert stats.count == CLIENTS * INCREMENTS
    assert stats.max_inflight == 1


@pytest.mark.parametrize("kind", ["sync", "gthread", UVICORN_WORKER])
def test_control_four_workers_bare_lose_updates(kind: str, tmp_path: Path, db: Path) -> None:
    if kind == UVICORN_WORKER:
        command = gunicorn(BARE_ASGI, "--workers", "4", "--worker-class", kind)
    else:
        command = four_workers(kind, "bare", tmp_path, None)
    with running_server(command, env=env_for(db)) as (url, _):
        sid = uuid.uuid4().hex
        hammer([url], sid)
    stats = report(f"gunicorn -w 4 {kind}, bare", db, sid)
    assert stats.count < CLIENTS * INCREMENTS
    assert stats.max_inflight > 1


def test_uvicorn_workers_lose_no_update(tmp_path: Path, db: Path, locks: str) -> None:
    command = gunicorn(
        factory(BARE_ASGI, backend=locks, key="cookie:sid"),
        *("--workers", "4", "--worker-class", UVICORN_WORKER),
    )
    with running_server(command, env=env_for(db)) as (url, _):
        sid = uuid.uuid4().hex
        hammer([url], sid)
    stats = report("gunicorn -w 4 uvicorn worker, file backend", db, sid)
    assert stats.count == CLIENTS * INCREMENTS
    assert stats.max_inflight == 1


# -- misconfiguration is reported at start ------------------------------------------------


def run_to_exit(
    command: list[str], env: dict[str, str], *, until: str, exit_within: float = 15
) -> tuple[int | None, str]:
    """Start ``command`` and read its output until it exits or prints ``until``.

    Returns the exit code (None: still running ``exit_within`` s later, then stopped)
    and the output.
    """
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    command[0] = str(BIN / command[0])
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    timer = threading.Timer(90, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    try:
        for raw in process.stdout:
            lines.append(raw.decode(errors="replace"))
            if until in lines[-1]:
                break
        code: int | None
        try:
            code = process.wait(timeout=exit_within)  # a server that stops does so promptly
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(process.pid, signal.SIGTERM)
        lines.extend(raw.decode(errors="replace") for raw in process.stdout)
        process.wait(timeout=30)
    finally:
        timer.cancel()
        process.stdout.close()
    return code, "".join(lines)


@pytest.mark.parametrize("form", ["factory", "conf"])
def test_memory_backend_under_four_workers_stops_the_start(
    form: str, tmp_path: Path, db: Path
) -> None:
    if form == "conf":
        command = four_workers("sync", "conf", tmp_path, "memory://")
    else:
        command = gunicorn(factory(BARE, backend="memory://"), "--workers", "4")
    code, output = run_to_exit(command, env_for(db), until="Shutting down: Master")
    assert code not in (None, 0), output
    assert "4 worker processes would run its requests at once" in output
    assert "Worker failed to boot" in output


def test_a_misspelt_option_stops_the_start_naming_the_known_ones(db: Path) -> None:
    command = gunicorn(factory(BARE, backend="memory://", timout=5))
    code, output = run_to_exit(command, env_for(db), until="Shutting down: Master")
    assert code not in (None, 0), output
    expected = "unknown option 'timout' (did you mean 'timeout'?) for sessionlock.gunicorn.wrap"
    assert expected in output
    assert "unexpected keyword argument" not in output


def test_control_memory_backend_under_one_worker_serves(db: Path) -> None:
    command = gunicorn(factory(BARE, backend="memory://", key="cookie:sid"), "--threads", "4")
    with running_server(command, env=env_for(db)) as (url, _):
        sid = uuid.uuid4().hex
        assert fetch(url, "POST", "/incr", sid)[0] == 200


# -- a crashed holder ---------------------------------------------------------------------


def _lock_holders(lock_dir: Path) -> tuple[int | None, int]:
    """(pid holding the directory's one lock file, how many wait on it), from /proc.

    The file backend's locks are OFD byte locks (``_ticketlock``): ``/proc/locks`` shows
    them with pid -1, so the holder (byte 0, write) is found in the workers' fdinfo.
    """
    inodes = set()
    for name in os.listdir(lock_dir) if lock_dir.exists() else ():
        if name.endswith(".lock"):
            with contextlib.suppress(FileNotFoundError):
                inodes.add(os.stat(lock_dir / name).st_ino)
    waiting = 0
    with open("/proc/locks") as table:
        for line in table:
            match = re.search(r"->\s+OFDLCK\s+\S+\s+\S+\s+-1\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s", line)
            waiting += bool(match and int(match[1]) in inodes)
    holding = [
        rf"OFDLCK\s+\S+\s+WRITE\s+-1\s+[0-9a-f]+:[0-9a-f]+:{inode}\s+0\s+0\b" for inode in inodes
    ]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(lock_dir)):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    text = info.read()
                if any(re.search(pattern, text) for pattern in holding):
                    return int(pid), waiting
    return None, waiting


def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)  # observing other processes: no event to wait on


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks")
def test_sigkill_of_the_holder_lets_the_session_go_on(tmp_path: Path, db: Path, locks: str) -> None:
    lock_dir = tmp_path / "locks"
    command = gunicorn(
        factory(BARE, backend=locks, key="cookie:sid"),
        *("--workers", "4", "--worker-class", "sync", "--timeout", "120"),
    )
    sid = uuid.uuid4().hex
    with running_server(command, env=env_for(db)) as (url, _):
        held: list[Any] = []
        holder = threading.Thread(
            target=lambda: held.append(
                _swallow(lambda: fetch(url, "GET", "/meet?room=never&n=2&timeout=90", sid))
            )
        )
        holder.start()
        _until(lambda: _lock_holders(lock_dir)[0] is not None)
        waiters = [
            threading.Thread(target=lambda: held.append(fetch(url, "POST", "/incr", sid)))
            for _ in range(2)
        ]
        for thread in waiters:
            thread.start()
        _until(lambda: _lock_holders(lock_dir)[1] == 2)  # both blocked in other workers
        pid, _ = _lock_holders(lock_dir)
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        for thread in waiters:
            thread.join(timeout=60)
        print(f"both waiters answered {time.monotonic() - killed:.3f} s after the SIGKILL")
        holder.join(timeout=60)
        assert not any(t.is_alive() for t in [holder, *waiters])
    answers = [answer for answer in held if isinstance(answer, tuple)]
    assert sorted(status for status, _ in answers) == [200, 200]
    assert read_stats(db, sid).count == 2


def _swallow(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (OSError, http.client.HTTPException) as error:  # the killed worker's connection
        return error


# -- a client that leaves frees its place (ASGI) ------------------------------------------


def _send_only(url: str, path: str, sid: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nCookie: sid={sid}\r\nContent-Length: 0\r\n\r\n"
    sock.sendall(head.encode())
    return sock


def test_uvicorn_client_that_disconnects_while_waiting_frees_its_place(
    db: Path, locks: str
) -> None:
    command = gunicorn(
        factory(BARE_ASGI, backend=locks, key="cookie:sid", max_waiters=1),
        *("--workers", "1", "--worker-class", UVICORN_WORKER),
    )
    sid, other = uuid.uuid4().hex, uuid.uuid4().hex
    room = uuid.uuid4().hex
    with running_server(command, env=env_for(db)) as (url, _):
        results: list[Any] = []
        holder = threading.Thread(
            target=lambda: results.append(
                fetch(url, "GET", f"/meet?room={room}&n=2&timeout=90", sid)
            )
        )
        holder.start()
        _until(lambda: read_stats(db, sid).requests == 1)  # the holder is inside the app
        leaving = _send_only(url, "/incr", sid)
        time.sleep(0.5)  # let the server queue it: a waiting request has nothing to observe
        # The queue (max_waiters=1) is full now: the control, a third request is refused.
        assert fetch(url, "POST", "/incr", sid)[0] == 429
        leaving.close()

        # Once the server has seen the disconnect, a new request may wait in its place
        # (until then it is refused with 429: try again).
        threads: list[threading.Thread] = []

        def admitted() -> bool:
            waiting = threading.Thread(
                target=lambda: results.append(fetch(url, "POST", "/incr", sid))
            )
            waiting.start()
            waiting.join(timeout=2)
            if waiting.is_alive():  # no 429: it waits behind the holder
                threads.append(waiting)
                return True
            return False

        _until(admitted)
        fetch(url, "GET", f"/meet?room={room}&n=2&timeout=90", other)  # the holder leaves
        holder.join(timeout=60)
        for thread in threads:
            thread.join(timeout=60)
    assert (200, {"count": 1}) in results  # the waiter that stayed ran; the one that left did not
    assert read_stats(db, sid).count == 1


# -- two servers started apart, no secret given -------------------------------------------


@pytest.mark.parametrize(
    ("backend", "serialized"),
    [pytest.param("file", True, id="file"), pytest.param("memory://", False, id="control-memory")],
)
def test_two_servers_started_apart_serialize_one_session(
    backend: str, serialized: bool, db: Path, locks: str
) -> None:
    url_of_backend = locks if backend == "file" else backend
    command = gunicorn(
        factory(BARE, backend=url_of_backend, key="cookie:sid"),
        *("--worker-class", "gthread", "--threads", "4"),
    )
    with (
        running_server(command, env=env_for(db)) as (first, _),
        running_server(command, env=env_for(db)) as (second, _),
    ):
        sid = uuid.uuid4().hex
        hammer([first, second], sid)
    stats = report(f"two gunicorns started apart, {backend}", db, sid)
    if serialized:
        assert stats.count == CLIENTS * INCREMENTS
        assert stats.max_inflight == 1
    else:
        assert stats.count < CLIENTS * INCREMENTS


# -- uvicorn --factory -------------------------------------------------------------------


#: The bare ASGI counter for ``sessionlock.uvicorn:app``, its database named by COUNTER_DB:
#: the factory refuses every SESSIONLOCK_* variable that names no option, and so the
#: SESSIONLOCK_TEST_DB that tests.e2e.apps:asgi_app reads.
FACTORY_ASGI = "tests.e2e.test_gunicorn_workers:factory_counter"
_factory_app: Any = None


async def factory_counter(scope: Any, receive: Any, send: Any) -> None:
    global _factory_app
    if _factory_app is None:
        _factory_app = make_asgi_counter(db=os.environ["COUNTER_DB"])
    await _factory_app(scope, receive, send)


def factory_env(db: Path, **variables: str) -> dict[str, str]:
    return {"COUNTER_DB": str(db), "SESSIONLOCK_APP": FACTORY_ASGI, **variables}


def uvicorn_factory(*extra: str) -> list[str]:
    return [
        "uvicorn",
        "--factory",
        "sessionlock.uvicorn:app",
        *("--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"),
        *extra,
    ]


def test_uvicorn_factory_with_workers_loses_no_update(db: Path, locks: str) -> None:
    env = factory_env(db, SESSIONLOCK_BACKEND=locks, SESSIONLOCK_KEY="cookie:sid")
    with running_server(uvicorn_factory("--workers", "2"), env=env) as (url, _):
        sid = uuid.uuid4().hex
        hammer([url], sid)
    stats = report("uvicorn --factory --workers 2, file backend", db, sid)
    assert stats.count == CLIENTS * INCREMENTS
    assert stats.max_inflight == 1


def test_uvicorn_factory_refuses_memory_under_workers(db: Path) -> None:
    env = factory_env(db, SESSIONLOCK_BACKEND="memory://")
    # uvicorn's supervisor restarts a worker that failed, so it keeps running: the error
    # in its output is the report.
    command = uvicorn_factory("--workers", "2")
    _, output = run_to_exit(command, env, until="ConfigurationError", exit_within=0.5)
    assert "2 worker processes would run its requests at once" in output


def test_uvicorn_factory_refuses_a_misspelt_variable(db: Path) -> None:
    env = factory_env(db, SESSIONLOCK_TIMOUT="5")
    code, output = run_to_exit(uvicorn_factory(), env, until="ConfigurationError")
    assert code not in (None, 0), output  # one process: uvicorn exits
    assert "unknown variable 'SESSIONLOCK_TIMOUT' (did you mean 'SESSIONLOCK_TIMEOUT'?)" in output
