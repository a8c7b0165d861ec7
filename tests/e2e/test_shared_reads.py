"""Shared reads on real servers: one session's GETs overlap, a POST among them runs alone.

    .venv/bin/python -m pytest -q -m e2e tests/e2e/test_shared_reads.py    # about 10 s

The apps (tests/e2e/shared_apps.py: Flask under gunicorn ``-w 2`` gthread on ``file://``,
Starlette under uvicorn on ``memory://``, and two uvicorn processes on one ``file://``
directory) keep the framework's default cookie session and report to a :class:`Room` in this
process: a small TCP server that sees every reader and writer of every worker process come in
and leave, the session value each one read, and each tagged request that has to wait for its
session (the in-process queue's line joined, or the file backend's cross-process one). The
test orders its requests on those reports, never on time, and the room's own waits are
events too; their bounds are only there so that a bug fails instead of hanging.

One browser (one cookie jar: Flask's or Starlette's ``session`` cookie and the middleware's
``sessionlock`` identity, from a first ``POST /init``) sends its requests on keep-alive
connections whose worker processes alternate (A, B, A, B...: a connection that reached a
worker with its share already is opened again), so with two workers every step below has
readers in both, and the writer in one of them. Then:

1. 8 GETs at once: each reader waits in the room until all 8 are inside together (met), or
   until one of them is reported in line in its process's queue (a holder it cannot share
   with: they can never all be inside; broken at once, no timeout). A reader that enlists
   in the file backend's line breaks nothing: its non-waiting try also fails when another
   reader tries at the same instant, and it comes in a moment later, beside the others;
2. 4 "early" GETs and, once each of them is inside (without ``shared``: inside or waiting),
   a POST; each early reader
   stays in the room until the writer is inside or waiting. Once the writer is inside, 4
   "late" GETs go out with the jar as it is then (the POST has not answered: the session
   cookie from before it); the writer stays until each late one is inside or waiting, then
   saves n + 1.

With ``shared=["GET"]``: the 8 meet; the writer finds no reader inside and no reader comes
in while it is; the early readers read 0 (and were inside together), the late ones 1 (the
writer's update, although their cookie is older: the middleware's cookie tracking). Controls:
the same scenario without ``shared`` (readers never overlap: at most 1 inside, the 8 never
meet; the writer still alone, its update still seen) and bare (the 8 meet; the writer comes in
among the 4 early readers, the 4 late ones come in while it is inside, and they read 0:
the update is lost for them). Every outcome of the bare control here is forced by the
room's order, so it is asserted, not hoped for.

3. A GET sent while the POST *waits*: reader ``e0`` holds the session in worker A, the POST
   waits for it in A's in-process line, then ``m0`` goes out (to worker B when there are
   two). In one process ``m0`` waits behind the POST and reads its update. Across two
   processes it does not (xfail, strict): only the head of each process's in-process line
   takes a place in the file backend's cross-process line, so a POST waiting behind a reader
   of its own process is in no line that B sees; ``m0`` joins the reader holding and reads
   the session from before the POST. (The same holds without ``shared``: a request of
   another process goes before a request queued in A behind A's holder.)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .servers import cookie_expired, gunicorn, running_server, uvicorn

pytestmark = pytest.mark.e2e

READERS = 8  # the page's parallel GETs
EARLY = 4  # GETs in before the POST
LATE = 4  # GETs sent while the POST is inside
BOUND = 30.0  # seconds any wait may take before the test fails instead of hanging

FLASK = "tests.e2e.shared_apps:flask_app()"
STARLETTE = "tests.e2e.shared_apps:starlette_app"


# -- the room: the apps' probe, in this process -------------------------------------------------


@dataclass
class Outcome:
    """What the room saw during one scenario, and what the clients got."""

    together: dict[str, int] = field(default_factory=dict)  # tag letter -> most inside at once
    most_readers: int = 0  # readers inside at once, at most, over the whole scenario
    writer_found: list[str] = field(default_factory=list)  # readers inside as the writer came in
    beside_writer: list[str] = field(default_factory=list)  # readers that came in while it was
    overtook: list[str] = field(default_factory=list)  # readers in while a writer waited
    line_waits: list[str] = field(default_factory=list)  # tags that enlisted in file's line
    seen: dict[str, Any] = field(default_factory=dict)  # tag -> n the handler read
    pids: dict[str, int] = field(default_factory=dict)  # tag -> worker pid
    answers: dict[str, Any] = field(default_factory=dict)  # tag -> the response's JSON


class Room:
    """Handlers report here (``enter``, ``leave``, ``waits``, ``boot``) over TCP, one
    connection each; ``enter`` is answered once the handler may go on: when the condition
    :meth:`gate` set for its tag holds (none: at once)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.inside: dict[str, str] = {}  # tag -> role, now
        self.entered: set[str] = set()
        self.waiting: set[str] = set()  # reported waiting for the session (ever)
        self.queued: set[str] = set()  # of which in a line of an in-process queue
        self.gates: dict[str, Callable[[], bool]] = {}
        self.released = False  # every handler may go on (a failure: nobody hangs)
        self.closing = False
        self.boots = 0  # worker processes that built their app
        self.outcome = Outcome()
        self.errors: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def gate(self, tags: list[str], condition: Callable[[], bool]) -> None:
        """Handlers of ``tags`` stay inside until ``condition`` (called under the room's
        lock) holds."""
        for tag in tags:
            self.gates[tag] = condition

    # -- the protocol ---------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            if self.closing:
                conn.close()
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            try:
                message = json.loads(stream.readline())
                answer = self._handle(message)
            except Exception as error:  # reported by the test, not lost in a thread
                self.errors.append(repr(error))
                answer = {"error": repr(error)}
            stream.write((json.dumps(answer) + "\n").encode())
            stream.flush()

    def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op, tag = message["op"], message["tag"]
        with self.changed:
            if op == "boot":
                self.boots += 1
            elif op == "waits":
                self.waiting.add(tag)
                if message["where"] == "queue":
                    self.queued.add(tag)
                else:
                    self.outcome.line_waits.append(tag)
            elif op == "leave":
                del self.inside[tag]
            elif op == "enter":
                self._enter(tag, message)
            else:
                raise ValueError(f"unknown op {op!r}")
            if op != "boot":
                self.outcome.pids[tag] = message["pid"]
            self.changed.notify_all()
            if op == "enter":
                gate = self.gates.get(tag, lambda: True)
                if not self.changed.wait_for(lambda: gate() or self.released, BOUND):
                    self.errors.append(f"{tag}: its gate never opened")
        return {}

    def _enter(self, tag: str, message: dict[str, Any]) -> None:
        out = self.outcome
        role = message["role"]
        out.seen[tag] = message["seen"]
        writers = [t for t, r in self.inside.items() if r == "writer"]
        if role == "writer":
            out.writer_found = sorted(self.inside)
        elif writers:
            out.beside_writer.append(tag)
        elif "w" in self.waiting and "w" not in self.entered:  # the writer is in line
            out.overtook.append(tag)
        self.inside[tag] = role
        self.entered.add(tag)
        readers = [t for t, r in self.inside.items() if r == "reader"]
        out.most_readers = max(out.most_readers, len(readers))
        letter = tag[0]
        mine = sum(t[0] == letter for t in readers)
        out.together[letter] = max(out.together.get(letter, 0), mine)

    def in_or_waiting(self, tag: str) -> bool:
        return tag in self.entered or tag in self.waiting

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, BOUND), f"never happened: {what}"

    def close(self) -> None:
        with self.changed:
            self.released = self.closing = True
            self.changed.notify_all()
        with contextlib.suppress(OSError), socket.create_connection(self._listener.getsockname()):
            pass  # wakes the acceptor, which sees closing
        self._acceptor.join(BOUND)
        self._listener.close()
        for thread in self._threads:
            thread.join(BOUND)
        assert not self._acceptor.is_alive()
        assert not any(thread.is_alive() for thread in self._threads)


# -- the browser ---------------------------------------------------------------------------------


class Jar:
    """One browser's cookies: each request carries them as they are when it is sent."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}
        self.lock = threading.Lock()

    def header(self) -> str:
        with self.lock:
            return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def apply(self, set_cookies: list[str]) -> None:
        with self.lock:
            for header in set_cookies:
                pair, *attributes = header.split(";")
                name, _, value = pair.partition("=")
                if cookie_expired(attributes):
                    self.cookies.pop(name.strip(), None)
                else:
                    self.cookies[name.strip()] = value.strip()


class Connection:
    """A keep-alive connection to one server, pinned to the worker that accepted it."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=BOUND * 2)
        self.pid = -1

    def send(self, method: str, path: str, cookie: str, tag: str | None) -> tuple[Any, list[str]]:
        """One request: (the JSON answer, its Set-Cookie headers)."""
        headers = {"X-Probe": tag} if tag else {}
        if cookie:
            headers["Cookie"] = cookie
        self.conn.request(method, path, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        assert response.status == 200, (tag, response.status, body[:500])
        answer = json.loads(body)
        self.pid = answer["pid"]
        return answer, response.headers.get_all("Set-Cookie") or []

    def close(self) -> None:
        self.conn.close()


def spread(bases: list[str], workers: int, count: int) -> list[Connection]:
    """``count`` connections whose workers alternate (A, B, A, B...): a connection that
    reached a worker that has its share already is closed and opened again."""
    share = -(-count // workers)
    by_pid: dict[int, list[Connection]] = {}
    for attempt in range(50 * count):
        if sum(len(c) for c in by_pid.values()) == count:
            break
        conn = Connection(bases[attempt % len(bases)])
        conn.send("GET", "/pid", "", None)  # no cookie: the session of nobody
        mine = by_pid.setdefault(conn.pid, [])
        if len(mine) < share:
            mine.append(conn)
        else:
            conn.close()
    lines = list(by_pid.values())
    if len(lines) != workers or any(len(c) != share for c in lines):
        for conn in (c for conns in lines for c in conns):
            conn.close()
        raise AssertionError(f"could not spread {count} connections over {workers} workers")
    ordered = [conns[i] for i in range(share) for conns in lines]
    for extra in ordered[count:]:  # a share rounded up: never left to the garbage collector
        extra.close()
    return ordered[:count]


class Clients:
    """Requests in flight, each on a daemon thread; :meth:`join` waits for them all."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, conn: Connection, method: str, path: str, cookie: str, tag: str) -> None:
        def run() -> None:
            try:
                self.outcome.answers[tag], _ = conn.send(method, path, cookie, tag)
            except BaseException as error:
                self.errors.append(error)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(BOUND * 2)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"
        if self.errors:
            raise self.errors[0]


@contextlib.contextmanager
def browser(room: Room, served: Served) -> Iterator[tuple[list[Connection], Jar, Clients]]:
    """One browser: keep-alive connections whose worker processes alternate (A, B, A...),
    its jar once ``POST /init`` made the session, and its requests in flight. At the end
    every handler is let go, every client joined, every connection closed."""
    workers = served.workers
    room.wait_until(lambda: room.boots == workers, f"{workers} worker processes up")
    conns = spread(served.bases, workers, EARLY + 1 + LATE + 1)
    clients = Clients(room.outcome)
    try:
        jar = Jar()
        answer, set_cookies = conns[0].send("POST", "/init", "", "init")
        jar.apply(set_cookies)
        assert answer["n"] == 0
        assert "session" in jar.cookies
        yield conns, jar, clients
    finally:
        with room.changed:  # after a failure, nobody stays in the room
            room.released = True
            room.changed.notify_all()
        clients.join()
        for conn in conns:
            conn.close()
    assert not room.errors, room.errors


def page(room: Room, served: Served) -> Outcome:
    """Steps 1 and 2 of the module doc. With 2 workers each step has readers in both, and
    the writer in one of them."""
    out = room.outcome
    steps = [f"a{i}" for i in range(READERS)]
    early = [f"e{i}" for i in range(EARLY)]
    late = [f"l{i}" for i in range(LATE)]
    # Broken by a reader queued in its process (a holder it cannot share with): not by one
    # in file://'s line, whose non-waiting try may fail when two readers try at one instant.
    room.gate(steps, lambda: out.together.get("a") == READERS or bool(room.queued & {*steps}))
    room.gate(early, lambda: room.in_or_waiting("w"))
    overlap = served.mode != "exclusive"  # what the early readers can do before the POST
    room.gate(["w"], lambda: all(room.in_or_waiting(t) for t in late))
    with browser(room, served) as (conns, jar, clients):
        for i, tag in enumerate(steps):  # step 1
            clients.start(conns[i], "GET", "/read", jar.header(), tag)
        clients.join()

        for i, tag in enumerate(early):  # step 2
            clients.start(conns[i], "GET", "/read", jar.header(), tag)
        if overlap:
            room.wait_until(lambda: all(t in room.entered for t in early), "early ones in")
        else:
            room.wait_until(lambda: all(room.in_or_waiting(t) for t in early), "early in line")
        clients.start(conns[EARLY], "POST", "/write", jar.header(), "w")
        room.wait_until(lambda: "w" in room.entered, "the writer inside")
        cookie = jar.header()  # the POST has not answered: the session cookie from before it
        for i, tag in enumerate(late):
            clients.start(conns[EARLY + 1 + i], "GET", "/read", cookie, tag)
        clients.join()
    return out


def queued_writer(room: Room, served: Served) -> Outcome:
    """Step 3 of the module doc: ``e0`` in worker A, the POST waiting in A, ``m0`` to
    worker B (with one worker, to A); ``e0`` leaves once ``m0`` is in or waiting."""
    room.gate(["e0"], lambda: room.in_or_waiting("m0"))
    with browser(room, served) as (conns, jar, clients):
        clients.start(conns[0], "GET", "/read", jar.header(), "e0")
        room.wait_until(lambda: "e0" in room.entered, "the reader inside")
        clients.start(conns[2], "POST", "/write", jar.header(), "w")
        room.wait_until(lambda: "w" in room.waiting, "the writer waiting")
        clients.start(conns[1], "GET", "/read", jar.header(), "m0")
        clients.join()
    return room.outcome


def report(name: str, out: Outcome) -> None:
    late = [out.seen.get(f"l{i}") for i in range(LATE)]
    met = out.together.get("a") == READERS
    early = [out.seen.get(f"e{i}") for i in range(EARLY)]
    per_pid: dict[int, int] = {}
    for tag, pid in out.pids.items():
        if tag.startswith("a"):
            per_pid[pid] = per_pid.get(pid, 0) + 1
    writer_pid = out.pids.get("w")
    print(
        f"\nRESULT {name}: 8 readers met={met}, most readers inside={out.most_readers},"
        f" step-1 readers per worker pid={sorted(per_pid.values())};"
        f" early read {early} (most inside together {out.together.get('e')});"
        f" writer found inside={out.writer_found}, came in beside it={out.beside_writer};"
        f" late read {late} (in the writer's worker:"
        f" {sum(out.pids.get(f'l{i}') == writer_pid for i in range(LATE))} of {LATE});"
        f" POST answered {out.answers.get('w')}; took file://'s line: {out.line_waits}"
    )


# -- servers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    commands: list[list[str]]  # one server per command, all on one backend
    file: bool  # file:// in a fresh directory, else memory://
    workers: int  # worker processes in all


GTHREAD = ("-w", "2", "-k", "gthread", "--threads", "16", "--keep-alive", "120")
SETUPS = {
    "gunicorn-2w-file": Setup([gunicorn(FLASK, *GTHREAD, "--timeout", "120")], True, 2),
    "uvicorn-memory": Setup([uvicorn("--factory", STARLETTE)], False, 1),
    "uvicorn-2proc-file": Setup([uvicorn("--factory", STARLETTE)] * 2, True, 2),
}


@dataclass(frozen=True)
class Served:
    bases: list[str]
    workers: int
    mode: str


@pytest.fixture
def room() -> Iterator[Room]:
    made = Room()
    yield made
    made.close()


@pytest.fixture
def served(request: pytest.FixtureRequest, room: Room, tmp_path: Path) -> Iterator[Served]:
    """The servers of ``request.param`` (setup name, mode), running."""
    name, mode = request.param
    setup = SETUPS[name]
    env = {
        "SL_SHARED_MODE": mode,
        "SL_SHARED_BACKEND": f"file://{tmp_path / 'locks'}" if setup.file else "memory://",
        "SL_SHARED_PROBE": room.address,
    }
    with contextlib.ExitStack() as servers:
        urls = [servers.enter_context(running_server(c, env=env))[0] for c in setup.commands]
        yield Served(urls, setup.workers, mode)


def cases(mode: str, *names: Any) -> pytest.MarkDecorator:
    """The tests of ``mode`` on these setups (names, or ``pytest.param(name, marks=...)``)."""
    params = []
    for name in names:
        if isinstance(name, str):
            params.append(pytest.param((name, mode), id=name))
        else:
            (only,) = name.values
            params.append(pytest.param((only, mode), id=only, marks=name.marks))
    return pytest.mark.parametrize("served", params, indirect=True)


# -- the tests ------------------------------------------------------------------------------------


@cases("shared", *SETUPS)
def test_shared_gets_overlap_and_the_post_runs_alone(room: Room, served: Served) -> None:
    out = page(room, served)
    report("shared", out)
    assert out.together["a"] == READERS  # the 8 GETs were inside together
    assert out.together["e"] == EARLY  # so were the early ones
    assert out.writer_found == []  # the writer waited for them: it came in alone
    assert out.beside_writer == []  # and nobody came in while it was inside
    assert [out.seen[f"e{i}"] for i in range(EARLY)] == [0] * EARLY
    assert [out.seen[f"l{i}"] for i in range(LATE)] == [1] * LATE  # the POST's update
    assert [out.answers[f"l{i}"]["n"] for i in range(LATE)] == [1] * LATE
    assert out.answers["w"]["n"] == 1
    if served.workers > 1:  # they were inside together across the two processes
        assert len({out.pids[f"a{i}"] for i in range(READERS)}) == 2


@cases("exclusive", "gunicorn-2w-file", "uvicorn-memory")
def test_control_all_exclusive_the_gets_never_overlap(room: Room, served: Served) -> None:
    out = page(room, served)
    report("exclusive", out)
    assert out.together["a"] == 1
    assert out.most_readers == 1
    assert out.writer_found == []
    assert out.beside_writer == []
    assert [out.seen[f"l{i}"] for i in range(LATE)] == [1] * LATE


@cases("bare", "gunicorn-2w-file", "uvicorn-memory")
def test_control_bare_the_post_runs_among_the_gets_and_its_update_is_lost(
    room: Room, served: Served
) -> None:
    out = page(room, served)
    report("bare", out)
    assert out.together["a"] == READERS  # overlap, as with shared
    assert out.writer_found == [f"e{i}" for i in range(EARLY)]  # the writer came in among them
    assert sorted(out.beside_writer) == [f"l{i}" for i in range(LATE)]  # and they among it
    assert [out.seen[f"l{i}"] for i in range(LATE)] == [0] * LATE  # its update lost for them
    assert out.answers["w"]["n"] == 1


ACROSS = (
    "file://: a POST waiting in its process's in-process line (behind a reader of that"
    " process) is in no cross-process line; a GET of another process sent after it joins the"
    " readers holding and reads the session from before the POST"
)


@cases(
    "shared",
    "uvicorn-memory",
    pytest.param("gunicorn-2w-file", marks=pytest.mark.xfail(strict=True, reason=ACROSS)),
    pytest.param("uvicorn-2proc-file", marks=pytest.mark.xfail(strict=True, reason=ACROSS)),
)
def test_a_get_sent_while_the_post_waits_runs_after_it(room: Room, served: Served) -> None:
    out = queued_writer(room, served)
    print(f"\nRESULT queued writer: {out.seen}, overtook {out.overtook}")
    assert out.overtook == []
    assert out.seen == {"e0": 0, "w": 0, "m0": 1}
