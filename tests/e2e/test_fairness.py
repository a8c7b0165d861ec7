"""One session never stalls the others: a slow request and a burst of one session on threads.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_fairness.py -s

Session A sends one slow request (it waits inside the app until the test releases it) and,
once it is inside, 8 fast ones at once; session B then sends 3 requests, one after another.
On waitress (4 threads), gunicorn gthread (1 worker x 8 threads) and gunicorn sync (4
workers, ``file://``), with the default policy (``max_waiting_threads`` derived from the
server's threads), B's requests all complete while A's slow request is still inside the app:
the test releases A only after B is done. A's extra requests get 200 (after the slow one,
in order) or a 429/503 with ``Retry-After``. The control is the old policy (a cap no burst
reaches): A's waiting requests take every thread (every sync worker), and B's requests
enter the app only after A's slow one ended. All assertions are on the order of events the
app journals, never on durations.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.fairness_app import RELEASE, read_journal
from tests.e2e.servers import fetch_with_headers, gunicorn, running_server, waitress

pytestmark = pytest.mark.e2e

BURST = 8  # A's fast requests, sent at once
B_REQUESTS = 3
LIVENESS = 30.0  # guards against a hang; never reached when the code is right
GRACE = 1.5  # control only: how long B is given before A is released (the order decides)
OLD_POLICY = 1000  # a cap no burst reaches: threads wait as before max_waiting_threads
APP = "tests.e2e.fairness_app:app"


def factory(target: str, **options: object) -> str:
    arguments = "".join(f", {name}={value!r}" for name, value in options.items())
    return f"sessionlock.gunicorn:wrap({target!r}{arguments})"


def command_for(server: str, control: bool, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    env = {"FAIRNESS_DIR": str(tmp_path)}
    cap: dict[str, object] = {"max_waiting_threads": OLD_POLICY} if control else {}
    if server == "waitress":  # its default 4 threads; the middleware reads them from waitress
        if control:
            env["FAIRNESS_MAX_WAITING_THREADS"] = str(OLD_POLICY)
        return waitress("tests.e2e.fairness_app:wrapped_app"), env
    if server == "gthread":
        app = factory(APP, backend="memory://", key="cookie:sid", **cap)
        return gunicorn(app, "--worker-class", "gthread", "--workers", "1", "--threads", "8"), env
    locks = f"file://{tmp_path / 'locks'}"
    app = factory(APP, backend=locks, key="cookie:sid", **cap)
    return gunicorn(app, "--worker-class", "sync", "--workers", "4", "--timeout", "120"), env


class Call(threading.Thread):
    """A request in its own thread: ``sent`` once written, then the answer and when it came."""

    def __init__(self, url: str, path: str, sid: str, released: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.sid, self.released = url, path, sid, released
        self.sent = threading.Event()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.before_release = False
        self.error: BaseException | None = None

    def run(self) -> None:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=LIVENESS * 2)
        try:
            headers = {"Cookie": f"sid={self.sid}", "Connection": "close"}
            conn.request("GET", self.path, headers=headers)
            self.sent.set()
            response = conn.getresponse()
            response.read()
            self.status = response.status
            self.headers = {k.lower(): v for k, v in response.getheaders()}
            self.before_release = not self.released.is_set()
        except BaseException as error:
            self.error = error
        finally:
            self.sent.set()
            conn.close()


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LIVENESS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)  # observing another process's journal: no event to wait on


def position(journal: list[str], line: str) -> int:
    assert line in journal, (line, journal)
    return journal.index(line)


SERVERS = [
    pytest.param("waitress", id="waitress"),
    pytest.param("gthread", id="gunicorn-gthread-1x8"),
    pytest.param("sync", id="gunicorn-sync-w4-file"),
]


@pytest.mark.parametrize(
    "control", [pytest.param(False, id="fair"), pytest.param(True, id="control-old-policy")]
)
@pytest.mark.parametrize("server", SERVERS)
def test_a_busy_session_does_not_stall_another(server: str, control: bool, tmp_path: Path) -> None:
    command, env = command_for(server, control, tmp_path)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    released = threading.Event()
    with running_server(command, env=env) as (url, _):
        fetch_with_headers(url, "GET", "/fast?tag=warm", uuid.uuid4().hex)  # a worker is up
        slow = Call(url, "/slow?tag=A-slow", a, released)
        slow.start()
        until(lambda: "start A-slow" in read_journal(tmp_path))
        burst = [Call(url, f"/fast?tag=A-{i}", a, released) for i in range(BURST)]
        for call in burst:
            call.start()
        for call in burst:
            assert call.sent.wait(LIVENESS)
        b_answers: list[int] = []
        b_done = threading.Event()

        def session_b() -> None:
            try:
                for i in range(B_REQUESTS):
                    status, _, _ = fetch_with_headers(url, "GET", f"/fast?tag=B-{i}", b)
                    b_answers.append(status)
            finally:
                b_done.set()

        threading.Thread(target=session_b, daemon=True).start()
        b_finished_first = b_done.wait(GRACE if control else LIVENESS)
        (tmp_path / RELEASE).touch()  # A's slow request may end now
        released.set()
        for call in (slow, *burst):
            call.join(LIVENESS)
            assert not call.is_alive(), call.path
            assert call.error is None, (call.path, call.error)
        assert b_done.wait(LIVENESS)
    journal = read_journal(tmp_path)
    statuses = sorted(call.status for call in burst)
    print(f"\n{server} {'control' if control else 'fair'}: A burst {statuses}, B {b_answers}")
    assert slow.status == 200
    assert b_answers == [200] * B_REQUESTS
    slow_end = position(journal, "end A-slow")
    b_start = position(journal, "start B-0")
    for call in burst:
        tag = call.path.split("tag=")[1]
        if call.status == 200:  # it ran, and only after the slow one: one session, in order
            assert position(journal, f"start {tag}") > slow_end
        else:
            assert call.status in (429, 503), call.status
            assert call.headers.get("retry-after") == "1"
            assert f"start {tag}" not in journal
    if control:
        # The old policy: B's first request entered the app only after A's slow one ended.
        assert not b_finished_first
        assert b_start > slow_end
        assert statuses == [200] * BURST
    else:
        # B was done, all 3 requests, while A's slow request was still inside the app.
        assert b_finished_first
        assert position(journal, f"end B-{B_REQUESTS - 1}") < slow_end
        refused_early = [c for c in burst if c.status != 200 and c.before_release]
        assert refused_early, "A's burst was neither refused nor queued within the cap"
