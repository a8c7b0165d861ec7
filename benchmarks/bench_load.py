"""Load on real servers (wrk, 32 browsers with their own cookie jars): req/s, p50, p99.

    apt-get install wrk                                   # the load generator (Debian's 4.1)
    .venv/bin/python -m benchmarks.bench_load             # about 2 minutes
    .venv/bin/python -m benchmarks.bench_load --quick     # about 25 s: checks that it works

Apps, each on its own server (a subprocess on a free loopback port, all running at once):

- a Starlette counter (``SessionMiddleware``, signed cookie session ``session``) under
  uvicorn, 1 worker;
- a Flask counter (its default signed cookie session) under gunicorn gthread, 2 workers x 4
  threads;
- a raw ASGI "hello" app under uvicorn, 1 worker.

Variants of the counters: bare; wrapped on ``file://`` (a fresh temp directory) without
cookie tracking (``cookie_session=None``: it is on by default); wrapped on ``file://`` with
``cookie_session="session"`` (tracked). Of hello: bare, wrapped on ``memory://``, wrapped on
``file://``, with the defaults; and, as the floor, wrapped in :mod:`benchmarks._minimal`'s
least possible lock middleware (a dict of ``asyncio.Lock``, none of the safety). Every
variant uses the default key (the ``sessionlock`` identity cookie).

The client is ``wrk -t1 -c32`` with a Lua script that keeps 32 cookie jars: each request
takes a client that has no request in flight and sends ``X-Client: <i>`` with jar i's
cookies; a small wrapper outside the middleware (part of these apps, not the library) echoes
``X-Client`` and copies every Set-Cookie's ``name=value`` into one ``X-Jar`` header (wrk's
Lua sees one value per header name), from which ``response()`` updates jar i. So each client
behaves like one browser (the app's ``session`` cookie and our identity cookie), and its
requests never overlap. The script also checks each counter's value against the client's own
count of its requests: a mismatch (a lost update, or a jar that did not keep its cookie) is
reported in ``lost``.

The jars are kept from one wrk run to the next (a file the script reads and writes), so
after the warm-up every run is 32 returning browsers. Variants are interleaved: each round
runs every variant for 1 s (9 rounds; ``--rounds``, ``--seconds``), in an order that
rotates from round to round; req/s, p50 and p99 are medians over rounds, and the ratios
(wrapped/bare, tracked/untracked) are medians of the ratios measured in the same round (the
figures also give their range over rounds: how much the machine moved).
Targets: tracked/untracked >= 0.90 (cookie tracking costs at most 10 %) on uvicorn and on
gunicorn; hello wrapped/bare >= 0.93 on ``memory://``, >= 0.90 on ``file://``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._figures import Figure, print_figures
from ._minimal import MinimalASGI
from ._servers import Server, running
from ._table import median, print_table

CLIENTS = 32
WORKERS, THREADS = 2, 4  # gunicorn gthread
SECRET = "bench-load-secret-0123456789abcdef"
APP_ENV, VARIANT_ENV, LOCKS_ENV = "BENCH_LOAD_APP", "BENCH_LOAD_VARIANT", "BENCH_LOAD_LOCKS"
INSTALL = "apt-get install wrk"
TRACKING_TARGET = 0.90  # tracked / untracked req/s
HELLO_TARGETS = {"memory": 0.93, "file": 0.90}  # wrapped / bare req/s

# -- the apps the servers run -----------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _jar(set_cookies: Iterable[str]) -> str:
    """``name=value; ...`` of the Set-Cookie values (an empty value: the cookie is deleted)."""
    pairs = []
    for header in set_cookies:
        pair, _, attributes = header.partition(";")
        name, _, value = pair.strip().partition("=")
        if "max-age=0" in attributes.lower().replace(" ", ""):
            value = ""
        pairs.append(f"{name}={value}")
    return "; ".join(pairs)


class EchoASGI:
    """Outside the middleware: echoes ``X-Client``, folds every Set-Cookie into ``X-Jar``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = next((v for k, v in scope["headers"] if k == b"x-client"), None)

        async def echo(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                cookies = [v.decode("latin-1") for k, v in headers if k.lower() == b"set-cookie"]
                if client is not None:
                    headers.append((b"x-client", client))
                if cookies:
                    headers.append((b"x-jar", _jar(cookies).encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, echo)


class EchoWSGI:
    """The same for WSGI."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        client = environ.get("HTTP_X_CLIENT")

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            cookies = [v for k, v in headers if k.lower() == "set-cookie"]
            extra = [("X-Client", client)] if client else []
            if cookies:
                extra.append(("X-Jar", _jar(cookies)))
            return start_response(status, [*headers, *extra], exc_info)

        return self.app(environ, start)


def _options() -> dict[str, Any]:
    """The middleware's options for ``$BENCH_LOAD_VARIANT``; None: bare."""
    variant = os.environ[VARIANT_ENV]
    if variant == "memory":
        return {"backend": "memory://"}
    options: dict[str, Any] = {"backend": os.environ[LOCKS_ENV]}
    if variant == "tracked":
        options["cookie_session"] = "session"
    elif os.environ[APP_ENV] != "hello":
        # Tracking is on by default: the counters' untracked variant turns it off. Hello
        # keeps the defaults (it sets no cookie: what tracking costs it is part of the cost).
        options["cookie_session"] = None
    return options


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """The cheapest ASGI app: the worst case for the middleware's share of a request."""
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def starlette_counter() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def count(request: Request) -> Response:
        n = request.session.get("n", 0) + 1
        request.session["n"] = n
        return PlainTextResponse(str(n))

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]  # cookie "session"
    return Starlette(routes=[Route("/", count)], middleware=middleware)


def asgi_app() -> Any:
    """uvicorn ``--factory``: ``$BENCH_LOAD_APP`` (starlette, hello) as ``$BENCH_LOAD_VARIANT``."""
    from sessionlock.gunicorn import wrap_app

    app: Any = starlette_counter() if os.environ[APP_ENV] == "starlette" else hello
    if os.environ[VARIANT_ENV] == "minimal":
        app = MinimalASGI(app)
    elif os.environ[VARIANT_ENV] != "bare":
        app = wrap_app(app, asgi=True, workers=1, **_options())
    return EchoASGI(app)


def wsgi_app() -> Any:
    """gunicorn ``wsgi_app()``: the Flask counter as ``$BENCH_LOAD_VARIANT``."""
    import flask

    from sessionlock.gunicorn import wrap_app

    app = flask.Flask(__name__)
    app.secret_key = SECRET

    @app.get("/")
    def count() -> str:
        n = flask.session.get("n", 0) + 1
        flask.session["n"] = n
        return str(n)

    inner: Any = app.wsgi_app
    if os.environ[VARIANT_ENV] != "bare":  # as sessionlock.gunicorn:wrap does it
        inner = wrap_app(inner, asgi=False, workers=WORKERS, threads=THREADS, **_options())
    app.wsgi_app = EchoWSGI(inner)  # type: ignore[method-assign]
    return app


# -- the client: wrk and its script -----------------------------------------------------------

LUA = r"""
-- 32 browsers: each request goes to a client with no request in flight, with its cookies.
-- args: the number of clients, the file that keeps the jars from one run to the next.
local jars, counts, free, seen, threads = {}, {}, {}, {}, {}
clients, jarfile, lost, checked, unanswered, swapped = 32, nil, 0, 0, 0, 0
-- Globals jar1..jar32, "<count>\t<cookies>": wrk hands done() a thread's strings and
-- numbers safely (copying a table of tables crashes it).

local function header(jar)
  local parts = {}
  for k, v in pairs(jar) do table.insert(parts, k .. "=" .. v) end
  return table.concat(parts, "; ")
end

local function parse(cookies, jar, i)
  for pair in string.gmatch(cookies, "[^;]+") do
    local k, v = string.match(pair, "^%s*([^=]+)=(.*)$")
    if k then
      local old = jar[k]
      if i and k == "sessionlock" and old and v:match("^[^.]*") ~= old:match("^[^.]*") then
        swapped = swapped + 1 -- a new identity for a browser that had one
      end
      if v == "" then jar[k] = nil else jar[k] = v end
    end
  end
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  clients, jarfile = tonumber(args[1]) or 32, args[2]
  for i = 1, clients do
    jars[i], counts[i] = {}, 0
    table.insert(free, i)
  end
  local f = jarfile and io.open(jarfile, "r")
  if f then -- the same browsers as in the run before: returning visitors
    for line in f:lines() do
      local i, n, cookies = string.match(line, "^(%d+)\t(%d+)\t(.*)$")
      i = tonumber(i)
      if i and jars[i] then
        counts[i] = tonumber(n)
        parse(cookies, jars[i], nil)
      end
    end
    f:close()
  end
end

local rr, checking = 0, true
function request()
  local i
  if checking then -- wrk calls request() once to check the script, before connecting
    checking, i = false, 1
  else
    i = table.remove(free, 1)
  end
  if i == nil then -- only after a timeout: that client's answer never came
    rr = rr % clients + 1
    i = rr
    unanswered = unanswered + 1
  end
  local headers, cookies = {["X-Client"] = tostring(i)}, header(jars[i])
  if cookies ~= "" then headers["Cookie"] = cookies end
  return wrk.format("GET", "/", headers)
end

function response(status, headers, body)
  local i = tonumber(headers["X-Client"] or headers["x-client"])
  if i == nil then return end
  local jar = headers["X-Jar"] or headers["x-jar"]
  if jar then parse(jar, jars[i], i) end
  counts[i] = counts[i] + 1
  local n = tonumber(body)
  if status == 200 and n then
    -- The first answer of a run is not checked: the run before may have ended with an
    -- answer in flight, which the server counted and the jar never saw.
    if seen[i] then
      checked = checked + 1
      if n ~= counts[i] then lost = lost + 1 end
    end
    counts[i] = n
  end
  seen[i] = true
  _G["jar" .. i] = counts[i] .. "\t" .. header(jars[i])
  table.insert(free, i)
end

function done(summary, latency, requests)
  local l, c, u, s = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    l, c, u = l + t:get("lost"), c + t:get("checked"), u + t:get("unanswered")
    s = s + t:get("swapped")
    local file = t:get("jarfile")
    if file then
      local f = io.open(file, "w")
      for i = 1, t:get("clients") do
        local line = t:get("jar" .. i)
        if line then f:write(i, "\t", line, "\n") end
      end
      f:close()
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_LOAD {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"non2xx": %d, "errors": %d, "checked": %d, "lost": %d, "unanswered": %d, ' ..
    '"swapped": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout, c, l, u, s))
end
"""


class MissingTool(RuntimeError):
    pass


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise MissingTool(f"wrk not found: install it with `{INSTALL}`")
    return found


@dataclass
class Run:
    """One wrk run against one server."""

    rate: float  # requests per second
    p50: float  # ms
    p99: float  # ms
    non2xx: int
    errors: int
    checked: int
    lost: int
    swapped: int  # identities replaced in a jar that had one


def wrk(port: int, seconds: int, script: Path, jars: Path) -> Run:
    """One run of ``seconds`` (wrk takes whole seconds); ``jars`` carries the cookie jars
    from one run to the next, so every run but the first is 32 returning browsers."""
    command = [wrk_path(), "-t1", f"-c{CLIENTS}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["--latency", "-s", str(script), f"http://127.0.0.1:{port}/"]
    command += ["--", str(CLIENTS), str(jars)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_LOAD "):
            data = json.loads(line.removeprefix("BENCH_LOAD "))
            return Run(
                rate=data["requests"] / (data["duration_us"] / 1e6),
                p50=data["p50_us"] / 1000,
                p99=data["p99_us"] / 1000,
                non2xx=data["non2xx"],
                errors=data["errors"] + data["unanswered"],
                checked=data["checked"],
                lost=data["lost"],
                swapped=data["swapped"],
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


# -- the variants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    app: str  # starlette, flask, hello
    variant: str  # bare, minimal, memory, file, tracked

    @property
    def name(self) -> str:
        return f"{self.app}-{self.variant}"

    @property
    def server(self) -> str:
        return "gunicorn" if self.app == "flask" else "uvicorn"

    @property
    def label(self) -> str:
        return {
            "bare": "bare",
            "minimal": "a minimal lock middleware (the floor)",
            "memory": "wrapped, memory://",
            "file": "wrapped, file://",
            "tracked": 'wrapped, file://, cookie_session="session"',
        }[self.variant]


GROUPS: dict[str, list[Variant]] = {
    app: [Variant(app, v) for v in variants]
    for app, variants in (
        ("starlette", ("bare", "file", "tracked")),
        ("flask", ("bare", "file", "tracked")),
        ("hello", ("bare", "minimal", "memory", "file")),
    )
}
TITLES = {
    "starlette": "Starlette counter, uvicorn 1 worker",
    "flask": f"Flask counter, gunicorn gthread {WORKERS}x{THREADS}",
    "hello": "hello (raw ASGI), uvicorn 1 worker",
}


def _command(variant: Variant, locks: Path) -> tuple[list[str], dict[str, str]]:
    env = {
        APP_ENV: variant.app,
        VARIANT_ENV: variant.variant,
        LOCKS_ENV: f"file://{locks / variant.name}",
    }
    if variant.server == "uvicorn":
        argv = ["uvicorn", "--factory", "benchmarks.bench_load:asgi_app", "--host", "127.0.0.1"]
        argv += ["--port", "{port}", "--log-level", "warning", "--no-access-log"]
    else:
        argv = ["gunicorn", "--bind", "127.0.0.1:{port}", "--workers", str(WORKERS)]
        argv += ["--worker-class", "gthread", "--threads", str(THREADS), "--log-level", "warning"]
        argv += ["--no-control-socket", "benchmarks.bench_load:wsgi_app()"]
    return argv, env


Results = dict[Variant, list[Run]]


def measure(rounds: int, seconds: int, *, progress: bool = False) -> Results:
    """Every variant for ``seconds`` per round, interleaved in a rotating order."""
    wrk_path()
    variants = [v for group in GROUPS.values() for v in group]
    results: Results = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        base = Path(scratch)
        (base / "logs").mkdir()
        (base / "locks").mkdir(mode=0o700)
        script = base / "jars.lua"
        script.write_text(LUA)
        commands = {v.name: _command(v, base / "locks") for v in variants}
        with running(commands, base / "logs") as servers:
            jars = {v: base / f"jars-{v.name}.txt" for v in variants}
            for v in variants:  # warm up: imports, caches; 32 browsers get their cookies
                wrk(servers[v.name].port, 1, script, jars[v])
            for r in range(rounds):
                for g, group in enumerate(GROUPS.values()):
                    for i in range(len(group)):
                        v = group[(r + g + i) % len(group)]
                        server: Server = servers[v.name]
                        results[v].append(wrk(server.port, seconds, script, jars[v]))
                        server.check()
                if progress:
                    print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return results


def ratios(results: Results, top: Variant, bottom: Variant) -> list[float]:
    """req/s of ``top`` / ``bottom`` measured in the same round, per round."""
    return [t.rate / b.rate for t, b in zip(results[top], results[bottom], strict=True)]


def ratio(results: Results, top: Variant, bottom: Variant) -> float:
    """Median over rounds of req/s of ``top`` / ``bottom`` in the same round."""
    return median(ratios(results, top, bottom))


def _measured(results: Results, top: Variant, bottom: Variant) -> str:
    """The median ratio, and the range of the rounds' ratios (how much the machine moved)."""
    each = ratios(results, top, bottom)
    return f"{median(each):.3f}x (rounds {min(each):.2f}-{max(each):.2f})"


def table(results: Results) -> tuple[list[str], list[list[str]]]:
    rows = []
    for app, group in GROUPS.items():
        bare = group[0]
        for v in group:
            runs = results[v]
            x_bare = f"{ratio(results, v, bare):.3f}" if v is not bare else ""
            x_untracked = ""
            if v.variant == "tracked":
                x_untracked = f"{ratio(results, v, Variant(app, 'file')):.3f}"
            rows.append(
                [
                    TITLES[app],
                    v.label,
                    f"{median([r.rate for r in runs]):.0f}",
                    f"{median([r.p50 for r in runs]):.2f}",
                    f"{median([r.p99 for r in runs]):.2f}",
                    x_bare,
                    x_untracked,
                    str(sum(r.non2xx + r.errors for r in runs)),
                    f"{sum(r.lost for r in runs)}/{sum(r.checked for r in runs)}",
                    str(sum(r.swapped for r in runs)),
                ]
            )
    headers = ["app, server", "variant", "req/s", "p50 ms", "p99 ms", "x bare", "x untracked"]
    return [*headers, "errors", "lost", "new ids"], rows


def _tracking_name(app: str) -> str:
    server = "uvicorn 1 worker" if app == "starlette" else f"gunicorn gthread -w {WORKERS}"
    return f"cookie tracking, {app} on {server}: tracked/untracked req/s"


def _hello_name(backend: str) -> str:
    return f"hello on uvicorn: wrapped/bare req/s, {backend}://"


def figures_from(results: Results) -> list[Figure]:
    out = []
    for app in ("starlette", "flask"):
        tracked, untracked = Variant(app, "tracked"), Variant(app, "file")
        value = ratio(results, tracked, untracked)
        rate = median([r.rate for r in results[untracked]])
        lost = sum(r.lost for r in results[tracked])
        out.append(
            Figure(
                _tracking_name(app),
                _measured(results, tracked, untracked) + (f", {lost} lost" if lost else ""),
                f"untracked file:// {rate:.0f} req/s",
                f">= {TRACKING_TARGET:.2f}x",
                value >= TRACKING_TARGET and lost == 0,
            )
        )
    bare = Variant("hello", "bare")
    bare_rate = median([r.rate for r in results[bare]])
    floor = ratio(results, Variant("hello", "minimal"), bare)
    for backend, target in HELLO_TARGETS.items():
        value = ratio(results, Variant("hello", backend), bare)
        out.append(
            Figure(
                _hello_name(backend),
                _measured(results, Variant("hello", backend), bare),
                f"bare {bare_rate:.0f} req/s; a minimal lock middleware {floor:.3f}x",
                f">= {target:.2f}x",
                value >= target,
            )
        )
    return out


def unavailable(why: str) -> list[Figure]:
    names = [(_tracking_name(app), f">= {TRACKING_TARGET:.2f}x") for app in ("starlette", "flask")]
    names += [(_hello_name(b), f">= {t:.2f}x") for b, t in HELLO_TARGETS.items()]
    return [Figure.unavailable(name, target, why) for name, target in names]


def sizes(quick: bool) -> tuple[int, int]:
    """(rounds, seconds per run)."""
    return (2, 1) if quick else (9, 1)


def figures(quick: bool) -> list[Figure]:
    try:
        return figures_from(measure(*sizes(quick)))
    except MissingTool as missing:
        return unavailable(str(missing))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    parser.add_argument("--rounds", type=int, help="rounds (default 9, --quick 2)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 1)")
    args = parser.parse_args(argv)
    rounds, seconds = sizes(args.quick)
    rounds, seconds = args.rounds or rounds, args.seconds or seconds
    try:
        results = measure(rounds, seconds, progress=True)
    except MissingTool as missing:
        print(missing, file=sys.stderr)
        sys.exit(2)
    print(
        f"wrk -t1 -c{CLIENTS}, {CLIENTS} clients with their own cookie jars: {rounds} rounds"
        f" x {seconds:g} s per variant, medians"
    )
    headers, rows = table(results)
    print_table(headers, rows)
    print("x bare, x untracked: medians of the req/s ratios measured in the same round.")
    print("errors: non-2xx answers and socket errors; lost: counter values that were not the")
    print("client's own count (a lost update or a cookie the jar did not keep) / checked;")
    print("new ids: identity cookies replaced in a jar that had one (expected 0).\n")
    print_figures(figures_from(results))


if __name__ == "__main__":
    main()
