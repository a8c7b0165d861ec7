"""Every fenced block of README.md and docs/ is run by the suite, or listed with why it is not.

The blocks are parsed from the pages at test time (:mod:`tests.e2e.readme`): no snippet is
copied into a test. A block that is neither run nor listed fails
:func:`test_every_readme_block_is_run_or_listed`, so a new snippet cannot go untested; a
listed block that is gone fails too. Snippets that claim to protect a session run on real
servers in ``tests/e2e/test_readme_snippets.py`` (40 increments, 8 tabs, one cookie jar,
with a control); the others run here, in process, against a stub app of their kind. A block
shown on two pages (README's quickstarts, a framework page's first line) is a :data:`COPIES`
entry: its code is that of the block that runs, checked statement by statement.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import flask
import pytest

import sessionlock
from sessionlock.wsgi import SessionLockMiddleware
from tests.e2e import readme
from tests.e2e.readme import Ref

ROOT = Path(__file__).resolve().parent.parent
E2E = "tests/e2e/test_readme_snippets.py"
HERE = "tests/test_readme.py"
OUTPUT = "program output or a diagram, not code"
METRICS = "docs/metrics.md"
BENCH = "docs/benchmarks.md"

#: Blocks that are run, and where.
RUN: dict[Ref, str] = {
    readme.DEMO: f"{E2E}::test_the_demo_command_shows_the_race_and_its_fix",
    readme.QUICK_FLASK: f"{E2E} (quick_flask)",
    readme.QUICK_DJANGO: f"{E2E} (quick_django)",
    readme.QUICK_FASTAPI: f"{E2E} (quick_fastapi)",
    readme.USE_WSGI: f"{E2E} (use_flask, use_django, use_pyramid)",
    readme.USE_ASGI: f"{E2E} (use_starlette, use_fastapi)",
    readme.USE_ANY_ASGI: f"{E2E} (use_quart)",
    readme.EARLY_RELEASE: f"{HERE}::test_early_release_lets_the_next_request_run",
    readme.FILE_BACKEND: f"{E2E} (file_backend)",
    readme.REDIS_APP: f"{E2E} (redis_app)",
    readme.GUNICORN: f"{E2E} (gunicorn_django, gunicorn_gthread, gunicorn_uvicorn_worker)",
    readme.GUNICORN_CONF: f"{E2E} (gunicorn_conf)",
    readme.UVICORN: f"{E2E} (uvicorn_env)",
    readme.UVICORN_FACTORY: f"{E2E} (uvicorn_factory)",
    readme.COOKIE: f"{E2E} (cookie_flask, cookie_starlette, cookie_my_session, cookie_none)",
    readme.ROTATE: f"{HERE}::test_rotate_identity_at_login_leaves_a_planted_identity_nothing",
    readme.RULES: f"{HERE}::test_rules_example_runs_with_its_assertions",
    readme.RULES_HOOKS: f"{HERE}::test_rules_hooks_example_runs_with_its_assertions",
    readme.FLASK_EXT: f"{E2E} (flask_ext)",
    readme.DJANGO_SETTINGS: f"{E2E} (django_settings; `manage.py check` in its fixture)",
    readme.STARLETTE_RULES: f"{E2E} (starlette_rules)",
    readme.BEAKER: f"{E2E} (beaker) and {HERE}::test_beaker_example_answers_hello",
    readme.SHARED_FLASK: f"{HERE}::test_shared_reads_example_runs_gets_side_by_side",
    readme.STALE_FLASK: f"{HERE}::test_stale_pages_flask_example_redirects_the_old_form",
    readme.STALE_FASTAPI: f"{HERE}::test_stale_pages_fastapi_example_refuses_the_old_form",
    readme.STALE_DJANGO: "tests/test_stale_django.py::test_the_readme_settings_and_template",
    readme.METRICS_ON: "tests/test_metrics.py::test_the_docs_turning_it_on_block_wraps_with_..",
    readme.METRICS_STATSD: "tests/test_metrics.py::test_the_docs_statsd_example_counts_through_..",
    readme.STALE_DJANGO_TEMPLATE: "tests/test_stale_django.py (test_the_readme_settings_and_..)",
}

#: Blocks shown again on another page: each statement (Python: the same code, comments aside)
#: or command (shell) is one of the blocks it copies, which are run (or listed) above.
COPIES: dict[Ref, tuple[Ref, ...]] = {
    Ref(readme.R, "Flask", "from flask import Flask, session"): (readme.QUICK_FLASK,),
    Ref(readme.R, "Django", "# proj/wsgi.py"): (readme.QUICK_DJANGO,),
    Ref(readme.R, "Starlette and FastAPI", "from fastapi import"): (readme.QUICK_FASTAPI,),
    Ref(readme.R, "Quart, Falcon", "from sessionlock.wsgi import"): (readme.USE_WSGI,),
    Ref(readme.START, "Install", "pip install sessionlock"): (readme.INSTALL,),
    Ref(
        readme.START,
        "The two commands",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]'",
    ): (readme.DEMO,),
    Ref(
        readme.START,
        "The two commands",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test",
    ): (readme.TESTS,),
    Ref(readme.STARLETTE, "Wrap the app", "from sessionlock.asgi import"): (readme.USE_ASGI,),
    Ref("docs/frameworks/quart.md", "Wrap the app", "from sessionlock.asgi import"): (
        readme.USE_ASGI,
        readme.USE_ANY_ASGI,
    ),
    **{
        Ref(f"docs/frameworks/{name}.md", "Wrap the app", "from sessionlock.wsgi import"): (
            readme.USE_WSGI,
        )
        for name in ("pyramid", "bottle", "falcon")
    },
}

#: Blocks that are not run, each with its reason.
NOT_RUN: dict[Ref, str] = {
    readme.TESTS: "runs this very suite (recursion); its command is checked against .ci/run",
    readme.INSTALL: "installs from PyPI; the extras it names are checked against pyproject",
    Ref(METRICS, "Serving /metrics", "from prometheus_client import make_wsgi_app"): (
        "a mount of prometheus_client's app; tests/e2e/metrics_app.py serves /metrics so"
    ),
    Ref(METRICS, "gunicorn (several worker processes)", "export PROMETHEUS_MULTIPROC_DIR"): (
        "the recipe tests/e2e/test_metrics_gunicorn.py runs (tests/e2e/metrics_app.py)"
    ),
    Ref(METRICS, "gunicorn (several worker processes)", "from prometheus_client import multi"): (
        "the recipe tests/e2e/test_metrics_gunicorn.py runs (tests/e2e/metrics_app.py)"
    ),
    Ref(METRICS, "gunicorn (several worker processes)", "from prometheus_client import Coll"): (
        "the recipe tests/e2e/test_metrics_gunicorn.py runs (tests/e2e/metrics_app.py)"
    ),
    Ref(METRICS, "A scrape", "# HELP sessionlock_waiting"): OUTPUT,
    Ref("docs/matrix.md", "Run it", "pip install tox"): (
        "the whole matrix (80 tox environments, ~15 min): run by hand, its table in the page"
    ),
    Ref("docs/matrix.md", "In CI", "bash .ci/matrix"): "run by .ci/run, before this suite",
    Ref("docs/cli.md", "`sessionlock check`", "$ sessionlock check app:app"): OUTPUT,
    Ref("docs/cli.md", "`sessionlock check`", "$ sessionlock check misordered:app"): OUTPUT,
    Ref("docs/cli.md", "`sessionlock check`", "$ sessionlock check myap:app"): OUTPUT,
    Ref("docs/cli.md", "`sessionlock held`", "$ sessionlock held file:///"): OUTPUT,
    Ref("docs/platforms.md", "Platforms", "the file:// backend (the default) needs"): OUTPUT,
    Ref(METRICS, "Queries", "histogram_quantile(0.95"): "PromQL, for Prometheus",
    Ref(METRICS, "Queries", "sum by (outcome)"): "PromQL, for Prometheus",
    Ref(METRICS, "Queries", "sum(sessionlock_waiting)"): "PromQL, for Prometheus",
    Ref("docs/demo.md", "See it in a browser: the exam page", "pip install 'sessionlock[demo]'"): (
        "serves until Ctrl-C; tests/test_demo_serve.py runs `demo --serve --port 0` on a real "
        "server, over HTTP and in Chromium"
    ),
    Ref(readme.HOW, "How it works", "request -> key (hashed)"): OUTPUT,
    Ref(readme.HOW, "Fair to other sessions", "server    variant  quiet p50"): OUTPUT,
    readme.REDIS_HOSTS: "a deployment on two hosts (pip, gunicorn); its app.py block is run",
    Ref(BENCH, "Lost updates, measured", "requests sent  final count"): OUTPUT,
    Ref(BENCH, "Benchmarks", "figure "): OUTPUT,
    Ref(BENCH, "Benchmarks", "framework         variant"): OUTPUT,
    Ref(BENCH, "Benchmarks", "scenario                      server"): OUTPUT,
    Ref(BENCH, "Benchmarks", "waiter  variant"): OUTPUT,
    Ref(BENCH, "Benchmarks", "N  raw threading.Lock"): OUTPUT,
    **{
        copy: f"a copy of {', '.join(str(o) for o in originals)}"
        for copy, originals in COPIES.items()
    },
}

#: Blocks run in parts: the substrings the cases pick (tests/e2e/readme_apps.py).
PICKED: dict[Ref, list[str]] = {
    readme.USE_WSGI: ["import", "# Flask", "# Django", "Pyramid"],
    readme.USE_ASGI: ["import", "SessionMiddleware,", "add_middleware(SessionLockMiddleware)"],
    readme.USE_ANY_ASGI: ["quart_app"],
    readme.FILE_BACKEND: ["import", "app = "],
    readme.COOKIE: [
        "sessionlock.wsgi import",
        "# Flask",
        "sessionlock.asgi import",
        "SessionMiddleware,",
        "# Starlette",
        '"my_session"',
        "cookie_session=None",
    ],
}

#: Shell commands: run (by a substring the e2e cases pick) or not, with why.
COMMANDS_RUN = [
    ".venv/bin/python -m sessionlock demo",
    "proj.wsgi:application",
    '"app:app"',
    "uvicorn_worker",
    "uvicorn --factory sessionlock.uvicorn:app",
]
COMMANDS_NOT_RUN = {
    "python3 -m venv .venv": "makes a virtualenv: the suite already runs in one",
    ".venv/bin/pip install": "installs the project: the suite's environment has its extras",
    ".venv/bin/python -m pytest": "this very suite",
    "pip install": "installs from PyPI",
    "gunicorn -w 4 --threads 8 --worker-class gthread app:app": "a host of a two-host setup",
    "python -m sessionlock demo --serve": "serves until Ctrl-C: tests/test_demo_serve.py runs it",
    "tox ": "the framework matrix (docs/matrix.md): by hand, and a subset in .ci/run",
    "bash .ci/matrix": "run by .ci/run, before this suite",
    **dict.fromkeys(
        [
            "export PROMETHEUS_MULTIPROC_DIR=",
            "rm -rf '$PROMETHEUS_MULTIPROC_DIR'",
            "mkdir -p '$PROMETHEUS_MULTIPROC_DIR'",
            "gunicorn -w 4 -k gthread --threads 8 -c gunicorn.conf.py",
        ],
        "the multiprocess recipe: tests/e2e/test_metrics_gunicorn.py runs it (2 workers, a "
        "temporary directory)",
    ),
}


def test_every_readme_block_is_run_or_listed() -> None:
    """Over README.md and every page of docs/ (cli.md, metrics.md... included as they come)."""
    listed = {**RUN, **NOT_RUN}
    assert not set(RUN) & set(NOT_RUN)
    unaccounted = []
    for block in readme.all_blocks():
        found = [ref for ref in listed if readme.matches(block, ref)]
        if len(found) != 1:
            unaccounted.append(
                f"{block.path}:{block.line}: {block.ref_section}: {block.first_line}"
            )
    assert not unaccounted, "blocks neither run nor listed (or listed twice):\n" + (
        "\n".join(unaccounted)
    )
    for ref in listed:  # a listed block that left its page is a stale entry
        readme.find(ref)


def test_the_docs_have_blocks_in_the_inventory() -> None:
    """The parser reads docs/: a block of each kind of page is found where it is listed."""
    paths = {block.path for block in readme.all_blocks()}
    assert {"README.md", readme.START, readme.FLASK, readme.GUNICORN_PAGE} <= paths
    assert {ref.path for ref in RUN} - {"README.md"}  # most run blocks live in docs/


def _code(ref: Ref) -> list[str]:
    """A block's statements as code (comments and layout aside), or its shell commands."""
    block = readme.find(ref)
    if block.language == "python":
        return [ast.dump(ast.parse(text)) for text in readme.statements(block.source)]
    return readme.commands(block.source)


@pytest.mark.parametrize("copy", list(COPIES), ids=lambda ref: f"{ref.path}:{ref.section}")
def test_every_copy_is_the_code_of_the_blocks_it_copies(copy: Ref) -> None:
    originals = [text for ref in COPIES[copy] for text in _code(ref)]
    code = _code(copy)
    assert code, copy
    for text in code:
        assert text in originals, f"{copy}: not in {COPIES[copy]}: {text}"


def test_the_readme_quickstarts_are_the_framework_pages_own() -> None:
    """README's Flask, Django and FastAPI blocks are their pages' quickstarts, line for line."""
    quickstarts = {readme.QUICK_FLASK, readme.QUICK_DJANGO, readme.QUICK_FASTAPI}
    shown = [copy for copy, originals in COPIES.items() if set(originals) <= quickstarts]
    assert {COPIES[copy][0] for copy in shown} == quickstarts
    for copy in shown:
        assert copy.path == "README.md"
        assert readme.find(copy).source == readme.find(COPIES[copy][0]).source


def test_every_statement_of_a_block_run_in_parts_is_run() -> None:
    for ref, picks in PICKED.items():
        for text in readme.statements(readme.find(ref).source):
            assert any(pick in text for pick in picks), f"{ref}: not run: {text}"


def test_every_shell_command_is_run_or_listed() -> None:
    shell = [b for b in readme.all_blocks() if b.language == "sh"]
    assert len(shell) >= 6
    for block in shell:
        for text in readme.commands(block.source):
            run = [pick for pick in COMMANDS_RUN if pick in text]
            skipped = [start for start in COMMANDS_NOT_RUN if text.startswith(start)]
            assert run or skipped, f"{block.path}:{block.line}: neither run nor listed: {text}"
    for text in readme.commands(readme.find(readme.REDIS_HOSTS).source):
        assert any(text.startswith(start) for start in COMMANDS_NOT_RUN), text


def test_the_test_command_is_the_one_ci_runs() -> None:
    """'Run the tests (what CI runs, through `.ci/run`)': .ci/run has the same line."""
    line = " && ".join(readme.commands(readme.find(readme.TESTS).source))
    assert line in (ROOT / ".ci" / "run").read_text()


def _extras() -> dict[str, str]:
    """pyproject's optional dependencies: extra -> its list, as text (tomllib is 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    return dict(re.findall(r"^([a-z]+) = \[(.*?)\]$", text, flags=re.M | re.S))


@pytest.mark.parametrize(
    ("extra", "package"),
    [pytest.param("demo", "waitress", id="demo"), pytest.param("redis", "redis", id="redis")],
)
def test_the_install_lines_name_extras_that_exist(extra: str, package: str) -> None:
    commands = readme.commands(readme.find(readme.INSTALL).source)
    assert f"pip install 'sessionlock[{extra}]'" in commands
    assert f'"{package}>=' in _extras()[extra]
    for ref in (readme.DEMO, readme.TESTS):  # '.[demo]', '.[test,docs]'
        for text in readme.commands(readme.find(ref).source):
            if "pip install" in text:
                for name in text.split("'.[")[1].split("]")[0].split(","):
                    assert name in _extras(), name


def test_the_core_install_line_names_what_the_core_depends_on() -> None:
    line = readme.find(readme.INSTALL).source.splitlines()[0]
    text = (ROOT / "pyproject.toml").read_text()
    dependencies = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    names = re.findall(r'"([A-Za-z0-9_.\-]+?)(?:[<>=!~;\[ ]|")', dependencies)
    assert names == ["cryptography"]  # what this line must then say
    for name in names:
        assert name in line


# -- snippets run in process ------------------------------------------------------------------


@pytest.fixture
def flask_app(registry: None) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "readme-in-process-secret-0123456789"

    @app.get("/state")
    def state() -> Any:
        flask.session["seen"] = True
        return {"user": flask.session.get("user")}

    return app


def test_early_release_lets_the_next_request_run(flask_app: flask.Flask) -> None:
    """The `release_session` snippet: the session's next request runs during the slow part."""
    import threading

    released = threading.Event()
    other_done = threading.Event()
    seen: list[bool] = []

    def render_slow_report(data: dict[str, Any]) -> str:
        released.set()
        seen.append(other_done.wait(10))  # only set if the other request got the lock
        return f"report of {sorted(data)}"

    namespace = {"app": flask_app, "flask": flask, "render_slow_report": render_slow_report}
    readme.run(readme.find(readme.EARLY_RELEASE).source, namespace)
    flask_app.wsgi_app = SessionLockMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, backend="memory://", timeout=5
    )
    client = flask_app.test_client()
    assert client.get("/state").status_code == 200
    identity = client.get_cookie("sessionlock")
    assert identity is not None
    answers: list[int] = []

    def report() -> None:
        answers.append(client.get("/report").status_code)

    thread = threading.Thread(target=report)
    thread.start()
    assert released.wait(10)
    other = flask_app.test_client()  # another tab of the same browser
    other.set_cookie("sessionlock", identity.value)
    assert other.get("/state").status_code == 200  # a 503 after 5 s if still locked
    other_done.set()
    thread.join(10)
    assert answers == [200]
    assert seen == [True]


def test_early_release_outside_the_middleware_returns_false(flask_app: flask.Flask) -> None:
    """'harmless twice or outside the middleware (it returns False)'."""
    with flask_app.test_request_context("/"):
        assert sessionlock.release_session(flask.request) is False


class _User:
    id = "alice"


@pytest.mark.parametrize(
    ("rotate", "attacker_sees"),
    [pytest.param(True, None, id="snippet"), pytest.param(False, "alice", id="control")],
)
def test_rotate_identity_at_login_leaves_a_planted_identity_nothing(
    flask_app: flask.Flask, rotate: bool, attacker_sees: str | None
) -> None:
    source = readme.find(readme.ROTATE).source
    if not rotate:
        source = "\n".join(s for s in source.splitlines() if "rotate_identity" not in s)
    namespace = {"app": flask_app, "flask": flask, "sessionlock": sessionlock, "user": _User()}
    readme.run(source, namespace)
    login = namespace["login"]  # the fragment returns nothing: complete it with a page
    flask_app.view_functions["login"] = lambda: login() or "welcome"
    flask_app.wsgi_app = SessionLockMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, backend="memory://"
    )
    attacker = flask_app.test_client()
    assert attacker.get("/state").json == {"user": None}
    planted = attacker.get_cookie("sessionlock")
    assert planted is not None
    victim = flask_app.test_client()
    victim.set_cookie("sessionlock", planted.value)  # planted through a sibling subdomain
    victim.get("/state")
    assert victim.post("/login").status_code == 200
    assert victim.get("/state").json == {"user": "alice"}
    assert attacker.get("/state").json == {"user": attacker_sees}


def test_rules_example_runs_with_its_assertions() -> None:
    readme.run(readme.find(readme.RULES).source, {})  # its own asserts are the checks


def test_rules_hooks_example_runs_with_its_assertions() -> None:
    namespace: dict[str, Any] = {}
    readme.run(readme.find(readme.RULES_HOOKS).source, namespace)
    assert namespace["RULES"].header == "X-Session-Repaired"


def test_beaker_example_answers_hello(registry: None) -> None:
    from werkzeug.test import Client

    namespace: dict[str, Any] = {}
    readme.run(readme.find(readme.BEAKER).source, namespace)
    assert isinstance(namespace["app"], SessionLockMiddleware)
    response = Client(namespace["app"]).get("/")
    assert (response.status_code, response.data) == (200, b"hello")


def _old_form_twice(get: Any, post: Any) -> tuple[int, int]:
    """Answer question 1 from its page, then send that same page's form again."""
    page = get("/exam")
    token = re.search(r'name="session_revision" value="([^"]+)"', page)
    assert token is not None, page
    form = {"answer": "A", "session_revision": token.group(1)}
    return post("/answer", form), post("/answer", {**form, "answer": "B"})


def test_stale_pages_flask_example_redirects_the_old_form(registry: None) -> None:
    namespace: dict[str, Any] = {"__name__": __name__}  # Flask(__name__): a real module
    readme.run(readme.find(readme.STALE_FLASK).source, namespace)
    client = namespace["app"].test_client()
    first, second = _old_form_twice(
        lambda path: client.get(path).text,
        lambda path, form: client.post(path, data=form).status_code,
    )
    assert (first, second) == (302, 303)  # the app's redirect, then the stale form's
    with client.session_transaction() as session:
        assert session["answers"] == {"1": "A"}  # B was never recorded against question 2


def test_stale_pages_fastapi_example_refuses_the_old_form(registry: None) -> None:
    import asyncio

    import httpx

    namespace: dict[str, Any] = {}
    readme.run(readme.find(readme.STALE_FASTAPI).source, namespace)

    async def run() -> tuple[tuple[int, int], str]:
        transport = httpx.ASGITransport(app=namespace["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            pages: list[str] = []

            async def get(path: str) -> str:
                pages.append((await c.get(path)).text)
                return pages[-1]

            first_page = await get("/exam")
            token = re.search(r'value="([^"]+)"', first_page)
            assert token is not None
            form = {"answer": "A", "session_revision": token.group(1)}
            first = (await c.post("/answer", data=form)).status_code
            second = (await c.post("/answer", data={**form, "answer": "B"})).status_code
            return (first, second), await get("/exam")

    statuses, page = asyncio.run(run())
    assert statuses == (303, 409)
    assert "Question 2" in page  # only the fresh answer moved the exam on


def test_shared_reads_example_runs_gets_side_by_side(registry: None) -> None:
    import threading

    namespace: dict[str, Any] = {"__name__": __name__}
    readme.run(readme.find(readme.SHARED_FLASK).source, namespace)
    app = namespace["app"]
    barrier = threading.Barrier(2, timeout=10)

    @app.get("/meet")  # a GET like the example's: both must be inside at once to pass
    def meet() -> str:
        barrier.wait()
        return "met"

    client = app.test_client()
    assert client.get("/api/progress").json == {"current": 0}
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.get("/meet").text), daemon=True)
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == ["met", "met"]
