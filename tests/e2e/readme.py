"""The fenced code blocks of README.md and docs/, parsed at test time, and what runs them.

    from tests.e2e.readme import USE_WSGI, find, statement

    source = statement(USE_WSGI, "# Flask")     # one statement, verbatim from its page

A block is named by a :class:`Ref`: the file it is in (``README.md`` or a page under
``docs/``), the heading it sits under and the start of its first non-blank line. Python blocks
split into top-level statements (each with the comments on its own lines), shell blocks into
commands (continuation lines joined, ``&&`` chains split). The tests pick statements and
commands by a substring, so the page stays the only copy.

Also here: a browser's cookie jar shared by client threads (:class:`Jar`), the increment
scenario (:func:`increments`), and :func:`serving`, which starts several real servers at once
on free ports. The only edit ever made to a snippet's text is :func:`localize`: absolute
``/var/lib/...`` directories move under the test's temporary directory.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import cookie_expired

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
CLIENTS = 8
TOTAL = 40
WORK = 0.02  # seconds between a handler's session load and its save


@dataclass(frozen=True)
class Ref:
    """A block: its file (from the repository root), the heading it is under, its first line."""

    path: str
    section: str
    first: str


@dataclass(frozen=True)
class Block:
    path: str  # from the repository root: README.md, docs/...
    ref_section: str
    first_line: str
    language: str
    line: int  # where its opening fence is, 1-based
    source: str


def pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def all_blocks() -> list[Block]:
    """Every fenced block of README.md and docs/, in order."""
    return [block for page in pages() for block in blocks(page)]


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block of one page, in order, with the heading it sits under."""
    name = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    heading = ""
    fence: tuple[str, int] | None = None
    body: list[str] = []
    indent = ""  # a fence inside a list item is indented, and so is its body
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.lstrip(" ").startswith("```"):
                indent = line[: len(line) - len(line.lstrip(" "))]
                fence, body = (line.strip()[3:].strip(), number), []
        elif line.strip().startswith("```"):
            source = "\n".join(body) + "\n"
            first = next((text.strip() for text in body if text.strip()), "")
            found.append(Block(name, heading, first, fence[0], fence[1], source))
            fence = None
        else:
            body.append(line.removeprefix(indent))
    assert fence is None, f"{name}: the fence opened on line {fence[1]} is never closed"
    return found


def find(ref: Ref) -> Block:
    found = [b for b in blocks(ROOT / ref.path) if matches(b, ref)]
    assert len(found) == 1, f"{ref.path}: {len(found)} blocks match {ref}"
    return found[0]


def _starts(block: Block, ref: Ref) -> bool:
    return " ".join(block.first_line.split()).startswith(" ".join(ref.first.split()))


def matches(block: Block, ref: Ref) -> bool:
    """``block`` is in ``ref.path``, under a heading starting ``ref.section``, starts ``first``."""
    return (
        block.path == ref.path and block.ref_section.startswith(ref.section) and _starts(block, ref)
    )


# The blocks the tests name (the inventory in tests/test_readme.py lists every block).
R = "README.md"
START = "docs/getting-started.md"
HOW = "docs/how-it-works.md"
DEPLOY = "docs/deployment.md"
COOKIES = "docs/cookie-sessions.md"
RULES_PAGE = "docs/rules.md"
FLASK = "docs/frameworks/flask.md"
DJANGO = "docs/frameworks/django.md"
STARLETTE = "docs/frameworks/starlette.md"
FASTAPI = "docs/frameworks/fastapi.md"
GUNICORN_PAGE = "docs/servers/gunicorn.md"
UVICORN_PAGE = "docs/servers/uvicorn.md"
DETECT = "Detect and repair"
DEMO = Ref(R, "The two commands", "python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]'")
TESTS = Ref(R, "The two commands", "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test")
INSTALL = Ref(R, "Install", "pip install sessionlock")
QUICK_FLASK = Ref(FLASK, "Quickstart", "from flask import Flask, session")
QUICK_DJANGO = Ref(DJANGO, "Quickstart", "# proj/wsgi.py")
QUICK_FASTAPI = Ref(FASTAPI, "Quickstart", "from fastapi import FastAPI, Request")
USE_WSGI = Ref(START, "Use", "from sessionlock.wsgi import SessionLockMiddleware")
USE_ASGI = Ref(START, "Use", "from sessionlock.asgi import SessionLockMiddleware")
USE_ANY_ASGI = Ref(START, "Use", "app = SessionLockMiddleware(quart_app)")
EARLY_RELEASE = Ref(HOW, "When the lock is released", "import sessionlock")
FILE_BACKEND = Ref(DEPLOY, "One host", "from sessionlock.wsgi import")
REDIS_APP = Ref(DEPLOY, "Several hosts", "# app.py, the same on every host")
REDIS_HOSTS = Ref(DEPLOY, "Several hosts", "# host A and host B")
GUNICORN = Ref(GUNICORN_PAGE, "Gunicorn", "gunicorn -w 4")
GUNICORN_CONF = Ref(GUNICORN_PAGE, "Gunicorn", "# gunicorn.conf.py")
UVICORN = Ref(UVICORN_PAGE, "Uvicorn", "SESSIONLOCK_APP=")
UVICORN_FACTORY = Ref(UVICORN_PAGE, "Uvicorn", "import sessionlock.uvicorn")
COOKIE = Ref(COOKIES, "Cookie sessions", "from sessionlock.wsgi import SessionLockMiddleware")
ROTATE = Ref(COOKIES, "Threat model", '@app.post("/login")')
RULES = Ref(RULES_PAGE, DETECT, "from sessionlock.rules import Ruleset")
RULES_HOOKS = Ref(RULES_PAGE, DETECT, "import collections")
FLASK_EXT = Ref(FLASK, "Rules", "from flask import Flask, session")
DJANGO_SETTINGS = Ref(DJANGO, "Settings", "# settings.py")
STARLETTE_RULES = Ref(STARLETTE, "Rules", "from starlette.applications import Starlette")
BEAKER = Ref(
    RULES_PAGE, "Any WSGI session layer", "from beaker.middleware import SessionMiddleware"
)
SHARED_FLASK = Ref("docs/shared-reads.md", "Shared reads", "from flask import Flask, jsonify")
STALE_FLASK = Ref(FLASK, "Stale pages", "from flask import Flask, redirect")
STALE_FASTAPI = Ref(FASTAPI, "Stale pages", "from fastapi import FastAPI, Form")
STALE_DJANGO = Ref(DJANGO, "Stale pages", "# settings.py")
STALE_DJANGO_TEMPLATE = Ref(DJANGO, "Stale pages", "{% load sessionlock %}")
METRICS_ON = Ref("docs/metrics.md", "Turning it on", "from sessionlock.wsgi import")
METRICS_STATSD = Ref("docs/metrics.md", "Another metrics system", "import sessionlock")


# -- python blocks ----------------------------------------------------------------------------


def statements(source: str) -> list[str]:
    """The block's top-level statements, each the full lines it spans (comments included)."""
    lines = source.splitlines()
    result = []
    for node in ast.parse(source).body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = node.end_lineno or node.lineno
        result.append("\n".join(lines[start - 1 : end]))
    return result


def statement(ref: Ref, contains: str) -> str:
    """The one statement of the block that contains ``contains``."""
    found = [s for s in statements(find(ref).source) if contains in s]
    assert len(found) == 1, f"{ref}: {len(found)} statements contain {contains!r}"
    return found[0]


def localize(source: str, directory: str | Path) -> str:
    """The snippet with absolute ``/var/lib/`` directories moved under ``directory``."""
    return source.replace("/var/lib/", f"{directory}/var/lib/")


def run(source: str, namespace: dict[str, Any]) -> Any:
    """Exec ``source`` in ``namespace``; the value of its last statement if an expression."""
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        tree.body.pop()
        exec(compile(tree, "<snippet>", "exec"), namespace)
        return eval(compile(ast.Expression(last.value), "<snippet>", "eval"), namespace)
    exec(compile(tree, "<snippet>", "exec"), namespace)
    return None


# -- shell blocks -----------------------------------------------------------------------------


def commands(source: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped, ``&&`` split."""
    found: list[str] = []
    pending = ""
    for line in source.splitlines():
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        group: list[str] = []
        for word in [*shlex.split(text, comments=True), "&&"]:
            if word != "&&":
                group.append(word)
            elif group:
                found.append(shlex.join(group))
                group = []
    return found


def command(ref: Ref, contains: str) -> list[str]:
    """The one command of the block that contains ``contains``, as argv."""
    found = [c for c in commands(find(ref).source) if contains in c]
    assert len(found) == 1, f"{ref}: {len(found)} commands contain {contains!r}"
    return shlex.split(found[0])


# -- clients ----------------------------------------------------------------------------------


class Jar:
    """One browser's cookie jar, shared by its tabs (client threads).

    Each request carries the jar as it is when sent; each response's Set-Cookie is applied
    when it arrives (an expired one removes the cookie).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cookies: dict[str, str] = {}

    def header(self) -> str:
        with self._lock:
            return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def apply(self, set_cookies: list[str]) -> None:
        with self._lock:
            for line in set_cookies:
                pair, *attributes = line.split(";")
                name, _, value = pair.partition("=")
                if cookie_expired(attributes):
                    self.cookies.pop(name.strip(), None)
                else:
                    self.cookies[name.strip()] = value.strip()


@dataclass
class Outcome:
    final: int
    retries: int = 0  # 429/503 answers retried (the middleware's "come back later")
    statuses: dict[int, int] = field(default_factory=dict)


def send(base: str, jar: Jar, method: str, path: str) -> tuple[int, Any]:
    host, _, port = base.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"Connection": "close"}
        cookie = jar.header()
        if cookie:
            headers["Cookie"] = cookie
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        jar.apply(response.msg.get_all("Set-Cookie") or [])
    finally:
        conn.close()
    if response.status != 200:
        return response.status, body
    return 200, json.loads(body)


def increments(base: str, *, clients: int = CLIENTS, total: int = TOTAL) -> Outcome:
    """One browser: a first page view, then ``clients`` tabs sending ``total`` increments.

    The tabs start together (a barrier). A 429 or 503 (the middleware asking to come back:
    ``Retry-After: 1``) is sent again after a short pause, as a browser's retry would be,
    shortened to keep the suite fast; the count is of the increments answered 200.
    """
    jar = Jar()
    status, _ = send(base, jar, "GET", "/state")
    assert status == 200, status
    barrier = threading.Barrier(clients)
    lock = threading.Lock()
    outcome = Outcome(final=-1)
    errors: list[BaseException] = []

    def tab(count: int) -> None:
        try:
            barrier.wait(60)
            done = 0
            while done < count:
                status, body = send(base, jar, "POST", "/incr")
                with lock:
                    outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
                if status == 200:
                    done += 1
                elif status in (429, 503):
                    with lock:
                        outcome.retries += 1
                    time.sleep(0.02)  # a retry's pause (not a synchronization)
                else:
                    raise AssertionError(f"POST /incr answered {status}: {body!r}")
        except BaseException as error:
            errors.append(error)

    shares = [total // clients + (i < total % clients) for i in range(clients)]
    threads = [threading.Thread(target=tab, args=(n,)) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not errors, errors
    status, state = send(base, jar, "GET", "/state")
    assert status == 200, (status, state)
    outcome.final = int(state["n"])
    return outcome


# -- servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A server command (``{port}`` substituted), its extra environment and directory."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = str(ROOT)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held while choosing, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@contextlib.contextmanager
def serving(specs: Sequence[Spec], logs: Path) -> Iterator[list[str]]:
    """Start every server at once; yield their base URLs once all listen; stop them all."""
    started: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    try:
        for spec, port in zip(specs, _free_ports(len(specs)), strict=True):
            argv = [part.replace("{port}", str(port)) for part in spec.argv]
            if (BIN / argv[0]).exists():
                argv[0] = str(BIN / argv[0])
            env = {**os.environ, **dict(spec.env)}
            env["PYTHONPATH"] = os.pathsep.join([spec.cwd, str(ROOT), env.get("PYTHONPATH", "")])
            log = logs / f"server-{port}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    argv,
                    cwd=spec.cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append((process, port, log))
        deadline = time.monotonic() + 60
        for process, port, log in started:
            _wait_until_listening(process, port, log, deadline)
        yield [f"http://127.0.0.1:{port}" for _, port, _ in started]
    finally:
        for process, _, _ in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _, _ in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_until_listening(
    process: subprocess.Popen[bytes], port: int, log: Path, deadline: float
) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # readiness poll of a child process: no event to wait on
    raise RuntimeError(f"server did not listen on {port} in time:\n{log.read_text()[-4000:]}")
