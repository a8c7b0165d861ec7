"""A real ``redis-server`` (Debian's /usr/bin/redis-server) on a free loopback port, for tests.

    from tests.redis_server import redis_server  # noqa: F401 (the fixture)

    def test_something(redis_server: RedisServer) -> None:
        backend = RedisBackend(redis_server.url)

``redis_server``: a server of the test's own (it may stop and start it: an outage).
:func:`shared_server`: one server for the whole run, started at first use, for tests that
only need *a* Redis (the backend contract suite); :func:`flush` empties it between tests.
No persistence (``--save '' --appendonly no``): a stop loses everything, as a failover may.
Without redis-server installed, tests that need one are skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; :meth:`stop` and :meth:`start` keep its port and socket."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sessionlock-redis-"))
        self.socket = self.directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--unixsocket", str(self.socket),
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self._log()}")
            time.sleep(0.01)  # readiness poll of a child process: no event to wait on

    def stop(self) -> None:
        """SIGKILL: the server is gone at once, with everything it held (no persistence)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def command(self, *words: str) -> bytes:
        """One command's raw reply, over a plain socket (no client library involved)."""
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(65536)

    def _answers(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "redis.log").read_text()[-2000:]
        return ""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, running."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


_shared: RedisServer | None = None


def shared_server() -> RedisServer:
    """The run's one redis-server for tests that need any Redis (closed at exit)."""
    global _shared
    if _shared is None:
        server = RedisServer()
        server.start()
        atexit.register(server.close)
        _shared = server
    return _shared


def flush(server: RedisServer) -> None:
    assert server.command("FLUSHALL").startswith(b"+OK")
