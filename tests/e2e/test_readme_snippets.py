"""Every snippet of README.md and docs/ that claims to protect a session does, on a real server.

Each case completes a snippet into a small app of its framework with that framework's
default session (:mod:`tests.e2e.readme_apps`), runs the snippet's own lines, read from its
page now, to wrap it (or runs the page's command line, given a ``--bind``/``--port``),
serves it with a real server, and sends one browser's 40 increments from 8 tabs sharing one
cookie jar (:func:`tests.e2e.readme.increments`). With the snippet: 40 of 40. The control is
the same app without the snippet's wrapping (the same command without ``wrap``): it must lose
updates, or the scenario proves nothing. The table of counts is written at the end of the
module to ``<pytest basetemp>/readme_snippets.txt`` and to the terminal. README's quickstarts
are the framework pages' (``quick_*``), checked line for line in ``tests/test_readme.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import readme
from .readme import ROOT, Ref, Spec

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Case:
    id: str
    ref: Ref
    shown: str  # the README line the row stands for
    wrapped: Spec
    control: Spec | None  # None: the case is itself a setup the README says does not protect
    protects: bool = True


class Dirs:
    """The module's temporary directories: projects the README's commands run in."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tmp = base / "tmp"  # TMPDIR of every server: the default file:// lives there
        self.var = base / "root"  # where /var/lib/... of a snippet goes
        self.logs = base / "logs"
        self.wsgi = base / "wsgi-project"  # proj/ (Django), app.py (Flask), exams/
        self.asgi = base / "asgi-project"  # app/asgi.py (Starlette), factory.py
        # gunicorn.conf.py, proj/: gunicorn reads ./gunicorn.conf.py wherever it starts
        self.conf = base / "conf-project"
        self.db = base / "sessions.sqlite3"
        for directory in (self.tmp, self.var, self.logs, self.wsgi, self.asgi, self.conf):
            directory.mkdir(parents=True, exist_ok=True)
        files = {
            self.wsgi / "proj" / "__init__.py": "",
            self.wsgi / "proj" / "wsgi.py": (
                "from tests.e2e.readme_apps import django_application\n"
                "application = django_application()\n"
            ),
            self.wsgi / "app.py": (
                "from tests.e2e.readme_apps import flask_counter\napp = flask_counter()\n"
            ),
            self.wsgi / "exams" / "__init__.py": "",
            self.wsgi / "exams" / "session_rules.py": (
                "from sessionlock.rules import Ruleset, required\n"
                'RULES = Ruleset([required("selected_question_type", "basic")])\n'
            ),
            self.asgi / "app" / "__init__.py": "",
            self.asgi / "app" / "asgi.py": (
                "from tests.e2e.readme_apps import starlette_counter\napp = starlette_counter()\n"
            ),
        }
        for name in ("proj/__init__.py", "proj/wsgi.py"):
            files[self.conf / name] = files[self.wsgi / name]
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def env(self, **extra: str) -> tuple[tuple[str, str], ...]:
        base = {
            "TMPDIR": str(self.tmp),
            "SL_README_TMP": str(self.var),
            "SL_README_DB": str(self.db),
            "DJANGO_SETTINGS_MODULE": "tests.e2e.readme_django",
        }
        return tuple(sorted({**base, **extra}.items()))


def gthread(dirs: Dirs, case: str, mode: str, *extra: str, **env: str) -> Spec:
    argv = ("gunicorn", "--bind", "127.0.0.1:{port}", "--log-level", "warning")
    argv += ("-k", "gthread", *(extra or ("--threads", "16")), "tests.e2e.readme_apps:build()")
    return Spec(argv, dirs.env(SL_README_CASE=case, SL_README_MODE=mode, **env), str(dirs.wsgi))


def uvicorn(dirs: Dirs, case: str, mode: str) -> Spec:
    argv = ("uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning")
    argv += ("--factory", "tests.e2e.readme_apps:build")
    return Spec(argv, dirs.env(SL_README_CASE=case, SL_README_MODE=mode), str(dirs.asgi))


def first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip()


def python_cases(dirs: Dirs) -> list[Case]:
    def pair(case: str, ref: Ref, contains: str, server: str = "gthread", on: str = "") -> Case:
        shown = first_line(readme.statement(ref, contains)) + (f"  [on {on}]" if on else "")
        make = gthread if server == "gthread" else uvicorn
        return Case(case, ref, shown, make(dirs, case, "wrapped"), make(dirs, case, "control"))

    from .readme_apps import PYRAMID_FALLBACK, pyramid_statement

    pyramid = pyramid_statement()
    pyramid_shown = (
        first_line(pyramid)
        if pyramid
        else f"(no Pyramid line: the import above + `{PYRAMID_FALLBACK}`)"
    )
    redis_env = {"SL_README_REDIS": _redis_url(), "SESSIONLOCK_SECRET": "s" * 32}
    return [
        Case(
            "quick_flask",
            readme.QUICK_FLASK,
            first_line(readme.statement(readme.QUICK_FLASK, "app.wsgi_app =")),
            gthread(dirs, "quick_flask", "wrapped"),
            gthread(dirs, "quick_flask", "control"),
        ),
        Case(
            "quick_django",
            readme.QUICK_DJANGO,
            first_line(readme.statement(readme.QUICK_DJANGO, "application =")) + " ...",
            gthread(dirs, "quick_django", "wrapped"),
            gthread(dirs, "quick_django", "control"),
        ),
        Case(
            "quick_fastapi",
            readme.QUICK_FASTAPI,
            first_line(readme.statement(readme.QUICK_FASTAPI, "(SessionLockMiddleware)")),
            uvicorn(dirs, "quick_fastapi", "wrapped"),
            uvicorn(dirs, "quick_fastapi", "control"),
        ),
        pair("use_flask", readme.USE_WSGI, "# Flask"),
        pair("use_django", readme.USE_WSGI, "# Django"),
        Case(
            "use_pyramid",
            readme.USE_WSGI,
            pyramid_shown,
            gthread(dirs, "use_pyramid", "wrapped"),
            gthread(dirs, "use_pyramid", "control"),
        ),
        pair(
            "use_starlette",
            readme.USE_ASGI,
            "add_middleware(SessionLockMiddleware)",
            "uv",
            "Starlette",
        ),
        pair(
            "use_fastapi",
            readme.USE_ASGI,
            "add_middleware(SessionLockMiddleware)",
            "uv",
            "FastAPI",
        ),
        pair("use_quart", readme.USE_ANY_ASGI, "quart_app", "uv"),
        Case(
            "file_backend",
            readme.FILE_BACKEND,
            first_line(readme.statement(readme.FILE_BACKEND, "app = ")),
            gthread(dirs, "file_backend", "wrapped", "-w", "2", "--threads", "8"),
            gthread(dirs, "file_backend", "control", "-w", "2", "--threads", "8"),
        ),
        Case(
            "redis_app",
            readme.REDIS_APP,
            "app = SessionLockMiddleware(app, backend=redis://..., key=cookie:sessionid)",
            gthread(dirs, "redis_app", "wrapped", "-w", "2", "--threads", "8", **redis_env),
            gthread(dirs, "redis_app", "control", "-w", "2", "--threads", "8", **redis_env),
        ),
        pair("cookie_flask", readme.COOKIE, "# Flask"),
        pair("cookie_starlette", readme.COOKIE, "# Starlette", "uv"),
        pair("cookie_my_session", readme.COOKIE, '"my_session"', "uv"),
        Case(
            "cookie_none",
            readme.COOKIE,
            first_line(readme.statement(readme.COOKIE, "cookie_session=None")),
            uvicorn(dirs, "cookie_none", "wrapped"),
            None,
            protects=False,
        ),
        Case(
            "flask_ext",
            readme.FLASK_EXT,
            'SessionLock(app, rules=[...], backend="memory://", cookie_session="session")',
            gthread(dirs, "flask_ext", "wrapped"),
            gthread(dirs, "flask_ext", "control"),
        ),
        Case(
            "django_settings",
            readme.DJANGO_SETTINGS,
            'MIDDLEWARE = [..., "sessionlock.django.SessionLockMiddleware", ...]',
            gthread(dirs, "django_settings", "wrapped"),
            gthread(dirs, "django_settings", "control"),
        ),
        Case(
            "starlette_rules",
            readme.STARLETTE_RULES,
            'Middleware(SessionLockMiddleware, backend="memory://")',
            uvicorn(dirs, "starlette_rules", "wrapped"),
            uvicorn(dirs, "starlette_rules", "control"),
        ),
        Case(
            "beaker",
            readme.BEAKER,
            first_line(readme.statement(readme.BEAKER, "app = SessionLockMiddleware")),
            gthread(dirs, "beaker", "wrapped"),
            gthread(dirs, "beaker", "control"),
        ),
    ]


def _redis_url() -> str:
    from tests.redis_server import shared_server

    return shared_server().url


WRAP = re.compile(r'^sessionlock\.gunicorn:wrap\("([^"]+)"')


def _unwrapped(word: str) -> str:
    """``sessionlock.gunicorn:wrap("app:app", ...)`` -> ``app:app``; other words as they are."""
    match = WRAP.match(word)
    return match.group(1) if match else word


def command_cases(dirs: Dirs) -> list[Case]:
    """The Gunicorn and Uvicorn sections' command lines, run as written."""
    bind = ("--bind", "127.0.0.1:{port}", "--log-level", "warning")
    cases = []
    for case, contains, cwd in [
        ("gunicorn_django", "proj.wsgi:application", dirs.wsgi),
        ("gunicorn_gthread", '"app:app"', dirs.wsgi),
        ("gunicorn_uvicorn_worker", "uvicorn_worker", dirs.asgi),
    ]:
        argv = [
            readme.localize(word, dirs.var) for word in readme.command(readme.GUNICORN, contains)
        ]
        control = [_unwrapped(word) for word in argv]
        assert control != argv, argv
        cases.append(
            Case(
                case,
                readme.GUNICORN,
                " ".join(readme.command(readme.GUNICORN, contains)),
                Spec((argv[0], *bind, *argv[1:]), dirs.env(), str(cwd)),
                Spec((control[0], *bind, *control[1:]), dirs.env(), str(cwd)),
            )
        )

    conf = readme.localize(readme.find(readme.GUNICORN_CONF).source, dirs.var)
    (dirs.conf / "gunicorn.conf.py").write_text(conf)
    bare = "\n".join(line for line in conf.splitlines() if "sessionlock" not in line) + "\n"
    (dirs.conf / "gunicorn-control.conf.py").write_text(bare)
    cases.append(
        Case(
            "gunicorn_conf",
            readme.GUNICORN_CONF,
            first_line(readme.statement(readme.GUNICORN_CONF, "post_worker_init =")),
            Spec(("gunicorn", "-c", "gunicorn.conf.py", *bind), dirs.env(), str(dirs.conf)),
            Spec(("gunicorn", "-c", "gunicorn-control.conf.py", *bind), dirs.env(), str(dirs.conf)),
        )
    )

    port = ("--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning")
    words = readme.command(readme.UVICORN, "uvicorn --factory")
    env = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
    argv = [word for word in words if not re.match(r"^[A-Z_]+=", word)]
    control = [word for word in argv if word not in ("--factory", "sessionlock.uvicorn:app")]
    control.insert(1, env["SESSIONLOCK_APP"])
    cases.append(
        Case(
            "uvicorn_env",
            readme.UVICORN,
            " ".join(words),
            Spec((*argv, *port), dirs.env(**env), str(dirs.asgi)),
            Spec((*control, *port), dirs.env(), str(dirs.asgi)),
        )
    )

    factory = readme.localize(readme.find(readme.UVICORN_FACTORY).source, dirs.var)
    (dirs.asgi / "factory.py").write_text(factory)
    cases.append(
        Case(
            "uvicorn_factory",
            readme.UVICORN_FACTORY,
            first_line(readme.statement(readme.UVICORN_FACTORY, "def create_app")) + " ...",
            Spec(("uvicorn", "--factory", "factory:create_app", *port), dirs.env(), str(dirs.asgi)),
            Spec(("uvicorn", "app.asgi:app", *port), dirs.env(), str(dirs.asgi)),
        )
    )
    return cases


CASE_IDS = [
    "quick_flask",
    "quick_django",
    "quick_fastapi",
    "use_flask",
    "use_django",
    "use_pyramid",
    "use_starlette",
    "use_fastapi",
    "use_quart",
    "file_backend",
    "redis_app",
    "cookie_flask",
    "cookie_starlette",
    "cookie_my_session",
    "cookie_none",
    "flask_ext",
    "django_settings",
    "starlette_rules",
    "beaker",
    "gunicorn_django",
    "gunicorn_gthread",
    "gunicorn_uvicorn_worker",
    "gunicorn_conf",
    "uvicorn_env",
    "uvicorn_factory",
]
#: Cases the README claims protect but that do not (strict: a fix turns them into failures).
#: Empty: the last ones (Starlette under 4 ASGI worker processes, where requests waited behind
#: more writes than a cookie's lineage keeps) were fixed by handing such replays the latest.
XFAIL: dict[str, str] = {}
#: The same, intermittent: not strict, not hidden.
XFAIL_INTERMITTENT: dict[str, str] = {}
#: An expected failure is tried this many times: it must fail in one at least (a strict xfail).
XFAIL_ROUNDS = 3


@dataclass
class Row:
    ref: Ref
    shown: str
    wrapped: str
    control: str


class Servers:
    """The module's cases, and the table's rows as they come."""

    def __init__(self, dirs: Dirs) -> None:
        self.dirs = dirs
        self.cases = {c.id: c for c in python_cases(dirs) + command_cases(dirs)}
        self.rows: dict[str, Row] = {}


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Servers]:
    dirs = Dirs(tmp_path_factory.mktemp("readme"))
    subprocess.run(
        [sys.executable, "-m", "tests.e2e.readme_django", "migrate"],
        cwd=dirs.wsgi,
        env={**os.environ, **dict(dirs.env()), "PYTHONPATH": f"{dirs.wsgi}:{ROOT}"},
        check=True,
    )
    subprocess.run(  # the README's settings block passes `manage.py check` (and migrates)
        [sys.executable, "-m", "tests.e2e.readme_django", "migrate"],
        cwd=dirs.wsgi,
        env={
            **os.environ,
            **dict(dirs.env(SL_README_DJANGO="block")),
            "PYTHONPATH": f"{dirs.wsgi}:{ROOT}",
        },
        check=True,
    )
    result = Servers(dirs)
    yield result
    table = format_table(result.rows)
    output = tmp_path_factory.getbasetemp() / "readme_snippets.txt"
    output.write_text(table)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in table.splitlines():
            reporter.write_line(line)
        reporter.write_line(f"(written to {output})")


def format_table(rows: dict[str, Row]) -> str:
    header = ("snippet (page: section: line)", "with the snippet", "control (unwrapped)")
    lines = [
        (f"{r.ref.path}: {r.ref.section}: {r.shown}", r.wrapped, r.control) for r in rows.values()
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(3)]
    return (
        "\n".join(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in [header, *lines]
        )
        + "\n"
    )


def _marks(case: str) -> list[pytest.MarkDecorator]:
    if case in XFAIL:
        return [pytest.mark.xfail(strict=True, reason=XFAIL[case])]
    if case in XFAIL_INTERMITTENT:
        return [pytest.mark.xfail(strict=False, reason=XFAIL_INTERMITTENT[case])]
    return []


def params() -> list[object]:
    return [pytest.param(case, id=case, marks=_marks(case)) for case in CASE_IDS]


@pytest.mark.parametrize("case_id", params())
def test_snippet_loses_no_update_and_its_control_does(servers: Servers, case_id: str) -> None:
    case = servers.cases[case_id]
    specs = [case.wrapped] if case.control is None else [case.wrapped, case.control]
    expected_to_fail = case_id in XFAIL or case_id in XFAIL_INTERMITTENT
    rounds = XFAIL_ROUNDS if expected_to_fail else 1
    with readme.serving(specs, servers.dirs.logs) as bases:  # started together
        tries = [readme.increments(bases[0]) for _ in range(rounds)]
        control = readme.increments(bases[1]) if case.control is not None else None
    wrapped = min(tries, key=lambda outcome: outcome.final)
    servers.rows[case_id] = Row(
        case.ref,
        case.shown,
        ", ".join(_shown(t) for t in tries) + (" (xfail)" if expected_to_fail else ""),
        "n/a: itself documented as no protection" if control is None else _shown(control),
    )
    if not case.protects:  # "cookie_session=None  # no tracking": the lock alone loses
        assert wrapped.final < readme.TOTAL, wrapped
        return
    assert control is not None
    assert control.final < readme.TOTAL, f"the control lost nothing: too weak a scenario {control}"
    assert wrapped.final == readme.TOTAL, wrapped


def _shown(outcome: readme.Outcome) -> str:
    retried = f" ({outcome.retries} retried after 429/503)" if outcome.retries else ""
    return f"{outcome.final}/{readme.TOTAL}{retried}"


def test_the_demo_command_shows_the_race_and_its_fix(servers: Servers) -> None:
    """`.venv/bin/python -m sessionlock demo`, with this interpreter for `.venv/bin/python`."""
    argv = readme.command(readme.DEMO, ".venv/bin/python -m sessionlock demo")
    assert argv[0] == ".venv/bin/python", argv
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0]: line.split()[-3:] for line in result.stdout.splitlines()}
    sent, final, _lost = rows["with sessionlock"]
    bare_sent, bare_final, _ = rows["without sessionlock"]
    servers.rows["demo"] = Row(
        readme.DEMO, " ".join(argv), f"{final}/{sent}", f"{bare_final}/{bare_sent}"
    )
    assert final == sent
    assert int(bare_final) < int(bare_sent)
