"""The demo: a real server, one session, concurrent increments, without and with the lock.

    python -m sessionlock demo --clients 4 --requests 10

Starts waitress on a free 127.0.0.1 port, in this process, serving a small WSGI app that
keeps a counter per session (cookie ``sid``) on the server. Each increment reads the count,
works a few milliseconds, then writes count + 1: the window every session store without a
lock has. Client threads, released together, send increments with one shared cookie, first
to the bare app, then to the app wrapped in :class:`sessionlock.wsgi.SessionLockMiddleware`
with its default backend. A table shows how many updates each run lost.
Needs waitress: ``pip install 'sessionlock[demo]'``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .keys import read_cookie
from .wsgi import SessionLockMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["CounterApp", "Outcome", "format_table", "run_demo"]

COOKIE = "sid"
EXTRA_HINT = "pip install 'sessionlock[demo]'"


@dataclass(frozen=True)
class Outcome:
    """One run: how many increments were answered, and what the counter says after."""

    label: str
    sent: int
    final: int

    @property
    def lost(self) -> int:
        return self.sent - self.final


class CounterApp:
    """A per-session counter kept on the server, incremented by read, work, write.

    The dict lock makes each read and each write atomic, as a database would; nothing makes
    the read-work-write sequence atomic, exactly as in a session store without locking.
    """

    def __init__(self, *, work: float) -> None:
        self.work = work
        self._counts: dict[str, int] = {}
        self._guard = threading.Lock()

    def count(self, sid: str) -> int:
        with self._guard:
            return self._counts.get(sid, 0)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sid = read_cookie(environ, COOKIE)
        if environ["REQUEST_METHOD"] != "POST" or sid is None:
            return _reply(start_response, "400 Bad Request", b"POST with a sid cookie\n")
        count = self.count(sid)  # load the session
        time.sleep(self.work)  # the handler's work
        with self._guard:  # save the session
            self._counts[sid] = count + 1
        return _reply(start_response, "200 OK", b"%d\n" % (count + 1))


def _reply(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


def run_demo(
    *,
    clients: int = 4,
    requests: int = 10,
    work: float = 0.02,
    on_start: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Both runs, bare then wrapped; ``on_start`` gets each server's URL as it starts."""
    if clients < 1 or requests < 1 or work < 0:
        raise ValueError("clients and requests must be >= 1, work >= 0")
    create_server = _import_waitress()
    outcomes = []
    for label, wrap in (("without sessionlock", False), ("with sessionlock", True)):
        counter = CounterApp(work=work)
        locked = SessionLockMiddleware(counter, key=f"cookie:{COOKIE}") if wrap else None
        # Twice the clients in threads: a client's next request may arrive while the thread
        # that answered its last one is still finishing, and a queued task would log a warning.
        with (
            contextlib.closing(locked.core.backend) if locked else contextlib.nullcontext(),
            _serving(create_server, locked or counter, threads=2 * clients) as (host, port),
        ):
            if on_start is not None:
                on_start(f"http://{host}:{port}/ ({label})")
            sid = secrets.token_urlsafe(16)
            sent = _fire(host, port, sid, clients=clients, requests=requests)
        outcomes.append(Outcome(label, sent, counter.count(sid)))
    return outcomes


def format_table(outcomes: Iterable[Outcome]) -> str:
    rows = [("", "requests sent", "final count", "updates lost")]
    rows += [(o.label, str(o.sent), str(o.final), str(o.lost)) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for label, *numbers in rows:
        cells = [label.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(numbers, widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _import_waitress() -> Callable[..., Any]:
    try:
        from waitress.server import create_server  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(f"the demo needs waitress: {EXTRA_HINT}") from error
    return create_server  # type: ignore[no-any-return]


@contextlib.contextmanager
def _serving(
    create_server: Callable[..., Any], app: WSGIApplication, *, threads: int
) -> Iterator[tuple[str, int]]:
    """Waitress on a free loopback port, its loop in a thread; closed from inside its loop."""
    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    loop = threading.Thread(target=server.run, name="sessionlock-demo-server", daemon=True)
    # Waitress warns "Task queue depth is N" whenever a request waits a moment for a free
    # thread (a loaded machine, connections winding down): noise in the demo's table.
    queue_log = logging.getLogger("waitress.queue")
    level = queue_log.level
    queue_log.setLevel(logging.ERROR)
    loop.start()
    try:
        yield str(server.effective_host), int(server.effective_port)
    finally:
        queue_log.setLevel(level)
        # Workers first: one that finishes after the loop closed would write to a closed pipe.
        server.task_dispatcher.shutdown()

        def close_everything() -> None:  # runs in the loop's thread: no race on its map
            for dispatcher in list(server._map.values()):
                dispatcher.close()

        # The loop may run this thunk before the wake-up byte is written (another wake-up
        # got there first); then the write meets the pipe the thunk closed, which is fine.
        with contextlib.suppress(OSError):
            server.trigger.pull_trigger(close_everything)
        loop.join(timeout=30)
        if loop.is_alive():
            raise RuntimeError("the demo server did not stop")


def _fire(host: str, port: int, sid: str, *, clients: int, requests: int) -> int:
    """``clients`` threads, released together, each POST ``requests`` increments; answered."""
    barrier = threading.Barrier(clients)
    answered = [0] * clients
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(requests):
                conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    conn.request("POST", "/", headers={"Cookie": f"{COOKIE}={sid}"})
                    response = conn.getresponse()
                    response.read()
                finally:
                    conn.close()
                if response.status != 200:
                    raise RuntimeError(f"the server answered {response.status}")
                answered[index] += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(answered)
