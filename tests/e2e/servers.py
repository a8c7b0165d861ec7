"""Start real servers (gunicorn, uvicorn, waitress...) as subprocesses on a free loopback port.

    with running_server(["gunicorn", "--threads", "8", "tests.e2e.apps:wsgi_app"]) as base_url:
        httpx.get(base_url + "/")

The command gets ``{port}`` substituted (or ``--bind``/``--port`` appended by the helpers
below); readiness is a TCP connect that succeeds, checked until a generous deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def cookie_expired(attributes: list[str]) -> bool:
    """Whether a Set-Cookie with these attributes removes the cookie (Max-Age first, as
    browsers do), for the test clients that keep a jar."""
    from email.utils import parsedate_to_datetime

    values = {}
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        values[key.strip().lower()] = value.strip()
    if "max-age" in values:
        return int(values["max-age"]) <= 0
    if "expires" in values:
        return parsedate_to_datetime(values["expires"]).timestamp() <= time.time()
    return False


class Jar:
    """A browser's cookie jar shared by concurrent requests (independent of the library)."""

    def __init__(self, cookies: dict[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self.cookies: dict[str, str] = dict(cookies or {})

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.cookies)

    def apply(self, response: httpx.Response) -> None:
        with self._lock:
            for header in response.headers.get_list("set-cookie"):
                pair, *attributes = header.split(";")
                name, _, value = pair.partition("=")
                if cookie_expired(attributes):
                    self.cookies.pop(name.strip(), None)
                else:
                    self.cookies[name.strip()] = value.strip()  # quotes kept, as browsers do


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # readiness poll of a child process: no event to wait on
    raise RuntimeError(f"server did not listen on {port} in time")


@contextlib.contextmanager
def running_server(
    argv: Sequence[str], *, env: dict[str, str] | None = None, startup_timeout: float = 30.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``argv`` ({port} substituted) until the block ends; yield (base_url, process)."""
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in argv]
    if not os.path.isabs(command[0]) and (BIN / command[0]).exists():
        command[0] = str(BIN / command[0])
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    log = (ROOT / ".pytest_cache").joinpath(f"server-{port}.log")
    log.parent.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until_listening(port, process, time.monotonic() + startup_timeout)
            yield f"http://127.0.0.1:{port}", process
        except BaseException:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def gunicorn(app: str, *extra: str) -> list[str]:
    """A gunicorn command line for ``app`` on the substituted port."""
    return ["gunicorn", "--bind", "127.0.0.1:{port}", "--log-level", "warning", *extra, app]


def uvicorn(app: str, *extra: str) -> list[str]:
    return [
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        *extra,
        app,
    ]


def waitress(app: str, *extra: str) -> list[str]:
    return ["waitress-serve", "--listen=127.0.0.1:{port}", *extra, app]


def fetch(base_url: str, method: str, path: str, sid: str, *, timeout: float = 60) -> Any:
    """One request with cookie ``sid`` on its own connection: (status, JSON or raw body)."""
    status, _, body = fetch_with_headers(base_url, method, path, sid, timeout=timeout)
    if status == 200:
        return 200, json.loads(body)
    return status, body


def in_parallel(jobs: list[Callable[[], Any]], *, timeout: float = 180) -> list[Any]:
    """Run the jobs in threads released together by a barrier; their results, in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=60)
            results[index] = job()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    if errors:
        raise errors[0]
    return results


def fetch_with_headers(
    base_url: str, method: str, path: str, sid: str, *, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    """One request with cookie ``sid`` on its own connection: (status, headers, raw body)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Cookie": f"sid={sid}", "Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body
