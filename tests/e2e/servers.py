"""Start real servers (gunicorn, uvicorn, waitress...) as subprocesses on a free loopback port.

    with running_server(["gunicorn", "--threads", "8", "tests.e2e.apps:wsgi_app"]) as base_url:
        httpx.get(base_url + "/")

The command gets ``{port}`` substituted (or ``--bind``/``--port`` appended by the helpers
below); readiness is a TCP connect that succeeds, checked until a generous deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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
