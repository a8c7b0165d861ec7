"""Hardening (issue 9): every flood and leak scenario, on this checkout or an older one.

    .venv/bin/python -m benchmarks.bench_hardening [--quick] [--tree PATH ...]

``--tree`` names the checkout whose ``sessionlock`` is measured (default: this repository);
give it twice (an older worktree and this one) for one table with a column per tree, or run
once per tree. Every measurement runs in a fresh subprocess with ``PYTHONPATH=<tree>`` (the
script checks that the tree's ``sessionlock`` is the one imported), and uses only
``SessionLockMiddleware(app, **options)`` with options every version has (``backend``,
``key``, ``timeout``, ``cookie_session``), so the measuring code is the same for both.

1. Upload flood while waiting (ASGI, uvicorn): 3 sessions each hold their session with a
   slow request (it waits until the client releases it), then each sends a second request
   with a 200 MB upload (20 MB with ``--quick``), streamed by the client in 1 MiB chunks,
   that waits for its turn. Once every upload has been sent or has made no progress for
   1.5 s (the server stopped reading), the server's peak RSS (``VmHWM``) is read, then the
   slow requests are released and each upload is checked to arrive whole.
2. Long-cookie flood: 4000 requests (400) each with a distinct 200 KiB cookie used as the
   key (``key="cookie:sid"``), in-process WSGI calls (real servers refuse such headers:
   uvicorn's h11 at 16 KiB); RSS before and after (``gc.collect()``).
3. Record flood: a Flask app (signed cookie session, ``cookie_session="session"``) whose
   page puts a CSRF token in the session, 20 000 (2 000) cookie-less in-process WSGI calls
   (for speed; a server adds nothing to what is stored), on ``memory://`` (heap growth by
   ``tracemalloc``, RSS growth) and on ``file://<tmpdir>`` (files and bytes on disk); the
   worst and p99 single request; for ``file://``, the first request of a fresh process on
   the flooded directory (the start sweep).
4. Shared-cache leak: a response with ``Cache-Control: public, max-age=60`` to a browser with
   no identity, on uvicorn and waitress: Set-Cookie headers the middleware added (the app
   sets none); a private page is the control (it must get the identity).
5. Invented identity: a request carrying ``sessionlock=<43 characters never issued>``:
   adopted (no new identity in the response) or replaced; as a cross-check, how long a
   second request with the same planted value waits behind a 1 s request with it (adopted:
   the planted value is the key, so it waits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import importlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
CHUNK = 1 << 20  # the client's upload chunk
STALL = 1.5  # seconds without upload progress: the server stopped reading
HOLD_LIMIT = 120.0  # seconds a slow request holds its session at most
TIMEOUT = 300.0  # the middleware's timeout: a waiting upload never times out during a run
IDENTITY = "sessionlock"  # the identity cookie's name over http, in every version

# -- in the server and worker processes -------------------------------------------------------


def _rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _check_tree() -> str:
    """The imported sessionlock must be the tree's (``$PYTHONPATH``), not the venv's."""
    import sessionlock

    tree = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve()
    where = Path(sessionlock.__file__ or "").resolve()
    if tree not in where.parents:
        raise RuntimeError(f"sessionlock imported from {where}, not from {tree}")
    return str(where.parent)


def _asgi_app() -> Any:
    held: dict[str, asyncio.Event] = {}
    entered: dict[str, asyncio.Event] = {}

    def event(table: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        return table.setdefault(name, asyncio.Event())

    async def respond(send: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        start = {"status": 200, "headers": [(b"content-type", b"text/plain"), *headers]}
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
        path = scope["path"]
        if path == "/slow":  # holds its session until /release
            event(entered, query["id"]).set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event(held, query["id"]).wait(), HOLD_LIMIT)
            await respond(send, b"slow done\n", [])
        elif path == "/entered":  # unserialized (no session): answers once /slow runs
            await asyncio.wait_for(event(entered, query["id"]).wait(), HOLD_LIMIT)
            await respond(send, b"entered\n", [])
        elif path == "/release":  # unserialized (no session)
            event(held, query["id"]).set()
            await respond(send, b"released\n", [])
        elif path == "/upload":  # reads the body as it comes and keeps none of it
            size, more = 0, True
            while more:
                message = await receive()
                size += len(message.get("body", b""))
                more = message.get("more_body", False) and message["type"] == "http.request"
            await respond(send, f"{size}\n".encode(), [])
        elif path == "/hold":
            await asyncio.sleep(float(query.get("s", "1")))
            await respond(send, b"held\n", [])
        elif path == "/public":
            await respond(send, b"public\n", [(b"cache-control", b"public, max-age=60")])
        else:
            await respond(send, b"page\n", [])

    return app


def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    headers = [("Content-Type", "text/plain")]
    path = environ.get("PATH_INFO", "/")
    if path == "/hold":
        time.sleep(float(environ.get("QUERY_STRING", "s=1").partition("=")[2] or 1))
    elif path == "/public":
        headers.append(("Cache-Control", "public, max-age=60"))
    start_response("200 OK", headers)
    return [b"page\n"]


def serve(kind: str, port: int) -> None:
    """A server process: ``asgi-upload`` and ``asgi-identity`` on uvicorn, ``wsgi-identity``
    on waitress, the app wrapped in the tree's middleware."""
    print("sessionlock from", _check_tree(), flush=True)
    options: dict[str, Any] = {"backend": "memory://", "timeout": TIMEOUT}
    if kind == "asgi-upload":
        options["key"] = "cookie:sid"
    if kind.startswith("asgi"):
        import uvicorn

        from sessionlock.asgi import SessionLockMiddleware as Asgi

        app = Asgi(_asgi_app(), **options)
        uvicorn.run(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
            lifespan="off", http="h11",
        )  # fmt: skip
    else:
        import waitress  # type: ignore[import-untyped]

        from sessionlock.wsgi import SessionLockMiddleware as Wsgi

        waitress.serve(Wsgi(_wsgi_app, **options), host="127.0.0.1", port=port, threads=4)


def _environ(**extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **extra,
    }


def _call(app: Any, environ: dict[str, Any]) -> list[tuple[str, str]]:
    """One in-process WSGI request, its body read and closed; the response headers."""
    got: list[tuple[str, str]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got[:] = headers
        return lambda data: None

    body = app(environ, start_response)
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return got


def cookie_flood(n: int, size: int) -> dict[str, Any]:
    """Scenario 2 (in a worker): n distinct ``size``-byte cookies as keys."""
    from sessionlock.wsgi import SessionLockMiddleware

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    wrapped = SessionLockMiddleware(app, backend="memory://", key="cookie:sid")
    filler = "a" * (size - 8)
    _call(wrapped, _environ(HTTP_COOKIE=f"sid=warm{filler[4:]}xxxx"))
    gc.collect()
    before = _rss_kib()
    started = time.perf_counter()
    for i in range(n):
        _call(wrapped, _environ(HTTP_COOKIE=f"sid={i:08d}{filler}"))
    elapsed = time.perf_counter() - started
    gc.collect()
    return {"rss_before": before, "rss_after": _rss_kib(), "us_per_request": elapsed / n * 1e6}


def _flask_app(url: str) -> Any:
    import flask

    from sessionlock.wsgi import SessionLockMiddleware

    app = flask.Flask("bench_hardening")
    app.secret_key = "bench-hardening-secret-key-0123456789"

    @app.get("/")
    def page() -> str:
        flask.session.setdefault("csrf", secrets.token_hex(16))  # a form's CSRF token
        return "page\n"

    app.wsgi_app = SessionLockMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, backend=url, cookie_session="session", timeout=TIMEOUT
    )
    return app


def record_flood(url: str, n: int, heap: bool) -> dict[str, Any]:
    """Scenario 3 (in a worker): n cookie-less requests to a page that sets a CSRF token."""
    import tracemalloc

    app = _flask_app(url)
    for _ in range(20):  # warm up: imports, Flask's first request, the backend
        _call(app, _environ())
    gc.collect()
    rss_before = _rss_kib()
    if heap:
        tracemalloc.start()
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        headers = _call(app, _environ())
        latencies.append(time.perf_counter() - start)
    gc.collect()
    heap_growth = tracemalloc.get_traced_memory()[0] if heap else None
    tracemalloc.stop()
    cookies = sum(1 for name, _ in headers if name.lower() == "set-cookie")
    latencies.sort()
    return {
        "rss_before": rss_before,
        "rss_after": _rss_kib(),
        "heap_growth": heap_growth,
        "worst_ms": latencies[-1] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "set_cookies_last": cookies,
    }


def first_request(url: str) -> dict[str, Any]:
    """Scenario 3, file:// (in a fresh worker): the flooded directory's first request."""
    for module in ("flask", "sessionlock.wsgi"):  # imports are not part of the figure
        importlib.import_module(module)
    start = time.perf_counter()
    app = _flask_app(url)
    _call(app, _environ())
    return {"first_ms": (time.perf_counter() - start) * 1000}


def worker(task: str, arguments: list[str]) -> None:
    _check_tree()
    result: dict[str, Any]
    if task == "cookie-flood":
        result = cookie_flood(int(arguments[0]), int(arguments[1]))
    elif task == "record-flood":
        result = record_flood(arguments[0], int(arguments[1]), arguments[2] == "heap")
    else:
        result = first_request(arguments[0])
    print(json.dumps(result), flush=True)


# -- in the measuring process -----------------------------------------------------------------


def _run_worker(tree: Path, task: str, *arguments: object) -> dict[str, Any]:
    command = [sys.executable, str(SCRIPT), "--worker", task, *map(str, arguments)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as cwd:  # nothing importable from the cwd
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900
        )
    if done.returncode != 0:
        raise RuntimeError(f"worker {task} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


def _start(tree: Path, kind: str, logs: Path) -> Server:
    from benchmarks._servers import free_port  # not at the top: --serve runs in the old tree

    port = free_port()
    command = [sys.executable, str(SCRIPT), "--serve", kind, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    log = logs / f"{kind}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=logs, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Server(kind, port, process, log)


@contextlib.contextmanager
def running(tree: Path, kinds: list[str]) -> Iterator[dict[str, Server]]:
    """The tree's servers, all at once, each stopped at the end of the block (even on error)."""
    from benchmarks._servers import stop, wait_listening

    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
        servers = {}
        for kind in kinds:
            servers[kind] = server = _start(tree, kind, Path(logs))
            stack.callback(stop, server.process)
        deadline = time.monotonic() + 60
        for server in servers.values():
            wait_listening(server.process, server.port, server.log, server.kind, deadline)
        yield servers


def _get(port: int, path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HOLD_LIMIT + 30)
    headers = {"Connection": "close"}
    if cookie is not None:
        headers["Cookie"] = cookie
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return response


class Upload(threading.Thread):
    """POST ``size`` bytes to /upload in CHUNK pieces; ``sent`` counts what the server took."""

    def __init__(self, port: int, sid: str, size: int) -> None:
        super().__init__(daemon=True)
        self.port, self.sid, self.size = port, sid, size
        self.sent = 0
        self.answer = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        chunk = bytes(CHUNK)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=HOLD_LIMIT) as sock:
                head = (
                    f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sid={self.sid}\r\n"
                    f"Content-Length: {self.size}\r\nConnection: close\r\n\r\n"
                )
                sock.sendall(head.encode())
                while self.sent < self.size:
                    piece = memoryview(chunk)[: min(CHUNK, self.size - self.sent)]
                    sock.sendall(piece)
                    self.sent += len(piece)
                answer = b""
                while data := sock.recv(65536):
                    answer += data
                self.answer = answer.decode(errors="replace")
        except BaseException as error:  # reported by the measuring thread
            self.error = error


def upload_flood(servers: dict[str, Server], size: int) -> dict[str, float]:
    """Scenario 1: peak server RSS while 3 uploads wait behind their sessions' slow requests."""
    server = servers["asgi-upload"]
    port, pid = server.port, server.process.pid
    _get(port, "/", "sid=warm")  # warm up the middleware and a small upload
    warm = Upload(port, "warm", 4 * CHUNK)
    warm.start()
    warm.join(60)
    time.sleep(0.5)
    idle = _rss_kib(pid)
    sids = [f"flood{i}" for i in range(3)]
    slows = [
        threading.Thread(target=_get, args=(port, f"/slow?id={sid}", f"sid={sid}"), daemon=True)
        for sid in sids
    ]
    for slow in slows:
        slow.start()
    for sid in sids:
        _get(port, f"/entered?id={sid}")
    uploads = [Upload(port, sid, size) for sid in sids]
    for upload in uploads:
        upload.start()
    sampled, last, still = idle, -1, time.monotonic()
    deadline = time.monotonic() + HOLD_LIMIT - 10
    while time.monotonic() < deadline:
        sampled = max(sampled, _rss_kib(pid))
        sent = sum(u.sent for u in uploads)
        if sent != last:
            last, still = sent, time.monotonic()
        if sent == 3 * size or time.monotonic() - still > STALL:
            break
        time.sleep(0.02)
    peak = max(sampled, _rss_kib(pid, "VmHWM"))
    sent_waiting = sum(u.sent for u in uploads)
    for sid in sids:
        _get(port, f"/release?id={sid}")
    for thread in (*slows, *uploads):
        thread.join(HOLD_LIMIT)
    for upload in uploads:
        if upload.error is not None or f"\n{size}\n" not in upload.answer:
            raise RuntimeError(f"upload {upload.sid}: {upload.error!r} {upload.answer[-200:]!r}")
    return {"idle": idle / 1024, "peak": peak / 1024, "sent": sent_waiting / 1e6}


def _set_cookies(response: http.client.HTTPResponse) -> list[SimpleCookie]:
    return [SimpleCookie(h) for h in response.headers.get_all("Set-Cookie") or ()]


def _waited_ms(response: http.client.HTTPResponse) -> float:
    for part in (response.headers.get("Server-Timing") or "").split(","):
        name, _, rest = part.strip().partition(";")
        if name == "sessionlock":
            for parameter in rest.split(";"):
                key, _, value = parameter.strip().partition("=")
                if key == "dur":
                    return float(value)
    return 0.0


def public_leak(port: int) -> tuple[int, int]:
    """Scenario 4: Set-Cookie headers on a public response and (control) a private one."""
    public = len(_set_cookies(_get(port, "/public")))
    private = len(_set_cookies(_get(port, "/")))
    return public, private


def invented_identity(port: int) -> tuple[str, float]:
    """Scenario 5: is a planted identity adopted? And does a 2nd request wait behind a 1st?"""
    planted = secrets.token_urlsafe(32)
    cookie = f"{IDENTITY}={planted}"
    issued = [c[IDENTITY].value for c in _set_cookies(_get(port, "/", cookie)) if IDENTITY in c]
    adopted = not issued or issued[0].split(".")[0] == planted
    holder = threading.Thread(target=_get, args=(port, "/hold?s=1", cookie), daemon=True)
    holder.start()
    time.sleep(0.3)  # the holder is running
    waited = _waited_ms(_get(port, "/", cookie))
    holder.join(30)
    return ("adopted" if adopted else "replaced"), waited


def _label(tree: Path) -> str:
    """The tree's commit, ``+changes`` when its sessionlock/ differs from that commit."""
    git = ["git", "-C", str(tree)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "sessionlock"], capture_output=True, text=True
    )
    label = head.stdout.strip() or tree.name
    return label + ("+changes" if changed.stdout.strip() else "")


def measure(tree: Path, quick: bool) -> dict[str, str]:
    """Every scenario on one tree: figure name -> value."""
    upload = (20 if quick else 200) * 1_000_000
    cookies = 400 if quick else 4000
    records = 2_000 if quick else 20_000
    out: dict[str, str] = {}
    with running(tree, ["asgi-upload", "asgi-identity", "wsgi-identity"]) as servers:
        flood = upload_flood(servers, upload)
        out["1 idle"] = f"{flood['idle']:.1f}"
        out["1 peak"] = f"{flood['peak']:.1f}"
        out["1 growth"] = f"{flood['peak'] - flood['idle']:.1f}"
        out["1 sent"] = f"{flood['sent']:.1f}"
        for kind, shell in (("asgi-identity", "uvicorn"), ("wsgi-identity", "waitress")):
            port = servers[kind].port
            public, private = public_leak(port)
            out[f"4 public {shell}"] = str(public)
            out[f"4 private {shell}"] = str(private)
            verdict, waited = invented_identity(port)
            out[f"5 verdict {shell}"] = verdict
            out[f"5 waited {shell}"] = f"{waited:.0f}"
    result = _run_worker(tree, "cookie-flood", cookies, 200 * 1024)
    out["2 before"] = f"{result['rss_before'] / 1024:.1f}"
    out["2 after"] = f"{result['rss_after'] / 1024:.1f}"
    out["2 growth"] = f"{(result['rss_after'] - result['rss_before']) / 1024:.1f}"
    out["2 us"] = f"{result['us_per_request']:.0f}"
    result = _run_worker(tree, "record-flood", "memory://", records, "heap")
    out["3m heap"] = f"{result['heap_growth'] / 1e6:.1f}"
    out["3m rss"] = f"{(result['rss_after'] - result['rss_before']) / 1024:.1f}"
    out["3m worst"] = f"{result['worst_ms']:.1f}"
    out["3m p99"] = f"{result['p99_ms']:.2f}"
    directory = tempfile.mkdtemp(prefix="bench-hardening-")  # 0700, ours
    try:
        url = f"file://{directory}"
        result = _run_worker(tree, "record-flood", url, records, "no-heap")
        files = size = 0
        for root, _, names in os.walk(directory):
            for name in names:
                files += 1
                size += os.lstat(os.path.join(root, name)).st_blocks * 512
        out["3f files"] = str(files)
        out["3f disk"] = f"{size / 1e6:.1f}"
        out["3f rss"] = f"{(result['rss_after'] - result['rss_before']) / 1024:.1f}"
        out["3f worst"] = f"{result['worst_ms']:.1f}"
        out["3f p99"] = f"{result['p99_ms']:.2f}"
        out["3f first"] = f"{_run_worker(tree, 'first-request', url)['first_ms']:.1f}"
    finally:
        subprocess.run(["rm", "-rf", directory], check=False)
    return out


def figures(quick: bool) -> list[tuple[str, str, str]]:
    """(key, scenario, figure) in table order."""
    upload = "3 x 20 MB" if quick else "3 x 200 MB"
    cookies = "400" if quick else "4000"
    records = "2 000" if quick else "20 000"
    s1 = f"1 upload flood, {upload} (uvicorn)"
    s2 = f"2 long cookies, {cookies} x 200 KiB (in-process)"
    s3m = f"3 record flood, {records}, memory:// (in-process)"
    s3f = f"3 record flood, {records}, file:// (in-process)"
    return [
        ("1 idle", s1, "server RSS idle, MB"),
        ("1 peak", s1, "server peak RSS (VmHWM) while waiting, MB"),
        ("1 growth", s1, "peak - idle, MB"),
        ("1 sent", s1, "MB sent while waiting (server + socket buffers)"),
        ("2 before", s2, "RSS before, MB"),
        ("2 after", s2, "RSS after, MB"),
        ("2 growth", s2, "RSS growth, MB"),
        ("2 us", s2, "µs per request"),
        ("3m heap", s3m, "heap growth (tracemalloc), MB"),
        ("3m rss", s3m, "RSS growth, MB"),
        ("3m worst", s3m, "worst request, ms"),
        ("3m p99", s3m, "p99 request, ms"),
        ("3f files", s3f, "files in the directory"),
        ("3f disk", s3f, "disk MB (st_blocks)"),
        ("3f rss", s3f, "RSS growth, MB"),
        ("3f worst", s3f, "worst request, ms"),
        ("3f p99", s3f, "p99 request, ms"),
        ("3f first", s3f, "new process: build + first request, ms"),
        ("4 public uvicorn", "4 Cache-Control: public, no identity", "our Set-Cookie (ASGI)"),
        ("4 public waitress", "4 Cache-Control: public, no identity", "our Set-Cookie (WSGI)"),
        ("4 private uvicorn", "4 control: private page", "our Set-Cookie (ASGI)"),
        ("4 private waitress", "4 control: private page", "our Set-Cookie (WSGI)"),
        ("5 verdict uvicorn", "5 invented identity", "adopted or replaced (ASGI)"),
        ("5 verdict waitress", "5 invented identity", "adopted or replaced (WSGI)"),
        ("5 waited uvicorn", "5 invented identity", "2nd request waited, ms (ASGI)"),
        ("5 waited waitress", "5 invented identity", "2nd request waited, ms (WSGI)"),
    ]


def main() -> None:
    from benchmarks._table import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    parser.add_argument(
        "--tree", action="append", type=Path, help="checkout to measure (repeatable)"
    )
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [ROOT]]
    labels = [_label(tree) for tree in trees]  # once: a shared checkout's HEAD may move
    results = []
    for tree, label in zip(trees, labels, strict=True):  # one after another, each alone
        print(f"measuring {tree} ({label}) ...", file=sys.stderr, flush=True)
        results.append(measure(tree, args.quick))
    rows = [
        [scenario, figure, *(r[key] for r in results)]
        for key, scenario, figure in figures(args.quick)
    ]
    print_table(["scenario", "figure", *labels], rows)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[4]))
    else:
        main()
