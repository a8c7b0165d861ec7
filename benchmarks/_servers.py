"""Real servers for the benchmarks: a free loopback port, readiness, and a sure stop.

Each benchmark builds its own command line; these are the parts they share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "Server", "free_port", "running", "stop", "wait_listening"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    process: subprocess.Popen[bytes], port: int, log: Path, name: str, deadline: float
) -> None:
    """Return once ``port`` accepts; raise with the log's tail if the server died or is late."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited:\n{tail}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        time.sleep(0.05)  # readiness poll of a child process: no event to wait on
    raise RuntimeError(f"{name} did not listen on {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@dataclass
class Server:
    """A server subprocess: its name, loopback port, process and log file."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        """Raise with the log's tail if the server has exited."""
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")


@contextlib.contextmanager
def running(
    commands: Mapping[str, tuple[Sequence[str], Mapping[str, str]]], logs: Path
) -> Iterator[dict[str, Server]]:
    """Start every server at once, wait until all listen, stop them all at the end (even on
    error). ``commands``: name -> (argv with ``{port}`` substituted and ``argv[0]`` looked up
    in the venv's bin, extra environment). ``PYTHONPATH`` is the repository root."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name, (argv, extra_env) in commands.items():
            port = free_port()
            command = [part.replace("{port}", str(port)) for part in argv]
            if (BIN / command[0]).exists():
                command[0] = str(BIN / command[0])
            env = {**os.environ, "PYTHONPATH": str(ROOT), **extra_env}
            log = logs / (name.replace("/", "-").replace(" ", "_") + ".log")
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            stack.callback(stop, process)
            servers[name] = Server(name, port, process, log)
        deadline = time.monotonic() + 60
        for server in servers.values():
            wait_listening(server.process, server.port, server.log, server.name, deadline)
        yield servers
