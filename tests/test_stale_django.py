"""Stale pages in Django: ``SESSIONLOCK = {"stale_pages": StalePages(...)}``, the template
tags, and the checks of ``sessionlock.django`` on Django's own session layer.

In-process, as tests/test_test_clients_django.py runs it: the test project's settings
(configured once per process), this module as the URLconf, Django's database session engine
on a test database (``setup_databases``: a shared in-memory SQLite that the AsyncClient's
worker thread sees too), ``SessionLockMiddleware`` before ``SessionMiddleware``. Each
scenario runs through ``Client`` (the WSGI request path) and ``AsyncClient`` (the ASGI one).

A page embeds the revision it was rendered from (``{% session_revision_field %}``); a POST
from it after the session has moved on is stale. Each refusal is checked against what the
view did (the counter in the session), and against a control in which the same requests
are applied.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.test import AsyncClient, Client, override_settings
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import path
from django.views.decorators.cache import cache_control

from sessionlock import StalePages, is_stale

LOCK = "sessionlock.django.SessionLockMiddleware"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
CSRF = "django.middleware.csrf.CsrfViewMiddleware"  # reads request.POST after the lock does
DB_SESSIONS = "django.contrib.sessions.backends.db"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": False,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
URLENCODED = "application/x-www-form-urlencoded"
FIELD_HTML = re.compile(r'<input type="hidden" name="session_revision" value="([^"]*)">')
TOKEN = re.compile(r"(\d+)\.([0-9a-f]{12})")
KEYS = [
    pytest.param("cookie:sessionid", id="key-sessionid"),
    pytest.param("identity", id="key-identity"),
]


# -- the views -------------------------------------------------------------------------------

PAGE = (
    "{% load sessionlock %}"
    '<form method="post" action="/count">{% session_revision_field %}'
    "<button>+1</button></form>"
    '<p id="n">{{ n }}</p><p id="token">{% session_revision %}</p>'
)


def render_page(request: HttpRequest) -> HttpResponse:
    text = engines["django"].from_string(PAGE).render({"n": request.session.get("n", 0)}, request)
    return HttpResponse(text)


def page(request: HttpRequest) -> HttpResponse:
    """The page with the form: reads the session, changes nothing."""
    return render_page(request)


def count(request: HttpRequest) -> HttpResponse:
    """What the form does: one more, whatever the method (the view of a stale POST that the
    middleware refuses never runs, so the counter says whether it did)."""
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(f"n={request.session['n']} stale={is_stale(request)}")


def count_and_page(request: HttpRequest) -> HttpResponse:
    """One more, and the page again: rendered by the very request that changed the session."""
    request.session["n"] = request.session.get("n", 0) + 1
    return render_page(request)


def value(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.session.get("n", 0)))


def touch(request: HttpRequest) -> HttpResponse:
    """A POST that reads the session and changes nothing in it."""
    return HttpResponse(f"n={request.session.get('n', 0)}")


@cache_control(public=True, max_age=60)
def public(request: HttpRequest) -> HttpResponse:
    return HttpResponse("public")


def body_length(request: HttpRequest) -> HttpResponse:
    """A view that reads the raw body after the middleware has looked for the token."""
    return HttpResponse(str(len(request.body)))


def cycle(request: HttpRequest) -> HttpResponse:
    """As ``django.contrib.auth.login`` does: a new session key, the data kept, and a change."""
    request.session.cycle_key()
    request.session["user"] = "alice"
    return HttpResponse("in")


def readme_exam(request: HttpRequest) -> HttpResponse:
    """The README's template (section "Stale pages in Django"), as it is there."""
    from tests.e2e import readme

    source = readme.find(readme.STALE_DJANGO_TEMPLATE).source
    return HttpResponse(engines["django"].from_string(source).render({}, request))


urlpatterns = [
    path("exam/", readme_exam),
    path("exam/answer/", count),
    path("page", page),
    path("count", count),
    path("flagged/count", count),
    path("count-and-page", count_and_page),
    path("value", value),
    path("touch", touch),
    path("public", public),
    path("body-length", body_length),
    path("cycle", cycle),
]


# -- Django, configured once per process; a test database for its sessions ------------------


@pytest.fixture(scope="module", autouse=True)
def database() -> Iterator[None]:
    if not settings.configured:
        module = importlib.import_module("tests.django_project.settings")
        settings.configure(
            **{name: getattr(module, name) for name in dir(module) if name.isupper()}
        )
        django.setup()
    from django.test.utils import setup_databases, teardown_databases

    old = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    teardown_databases(old, verbosity=0)


def django_settings(
    stale: StalePages | None, key: str = "cookie:sessionid", *, locked: bool = True, **more: Any
) -> Any:
    lock: dict[str, Any] = {"backend": "memory://", "key": key, "timeout": 5.0, **more}
    if stale is not None:
        lock["stale_pages"] = stale
    return override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[LOCK, SESSION, CSRF] if locked else [SESSION, CSRF],
        SESSION_ENGINE=DB_SESSIONS,
        TEMPLATES=TEMPLATES,
        SESSIONLOCK=lock,
    )


# -- the clients: the WSGI and the ASGI request path -----------------------------------------


@dataclass
class Seen:
    status: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def token(self) -> str | None:
        """The token of the page's hidden field; None if it has none."""
        found = FIELD_HTML.search(self.text)
        return found.group(1) if found else None

    @property
    def reply(self) -> tuple[int, str]:
        return self.status, self.text


def seen(response: Any) -> Seen:
    return Seen(response.status_code, response.content.decode(), dict(response.headers))


def form_body(fields: dict[str, str], encoding: str) -> tuple[bytes, str]:
    if encoding == "multipart":
        return encode_multipart(BOUNDARY, fields), MULTIPART_CONTENT
    return urlencode(fields).encode(), URLENCODED


class SyncClient:
    """Django's ``Client``: the WSGI handler."""

    def __init__(self) -> None:
        self.client: Any = Client()

    def send(
        self,
        method: str,
        where: str,
        *,
        form: dict[str, str] | None = None,
        encoding: str = "urlencoded",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        content_type: str = "application/octet-stream",
    ) -> Seen:
        if form is not None:
            body, content_type = form_body(form, encoding)
        return seen(
            self._answer(
                self.client.generic(method, where, body, content_type=content_type, headers=headers)
            )
        )

    def _answer(self, response: Any) -> Any:
        return response

    def get(self, where: str, **more: Any) -> Seen:
        return self.send("GET", where, **more)

    def post(self, where: str, **more: Any) -> Seen:
        return self.send("POST", where, **more)


class AsyncDjangoClient(SyncClient):
    """Django's ``AsyncClient``: the ASGI handler, the middleware's async path."""

    def __init__(self) -> None:
        self.client = AsyncClient()
        # As get_asgi_application() does, not at the first request on the loop.
        self.client.handler.load_middleware(is_async=True)

    def _answer(self, response: Any) -> Any:
        return asyncio.run(response)  # the AsyncClient's request is a coroutine


CLIENTS = [
    pytest.param(SyncClient, id="Client"),
    pytest.param(AsyncDjangoClient, id="AsyncClient"),
]


def with_session(make_client: type[SyncClient]) -> SyncClient:
    """A client whose browser has a session (with key cookie:sessionid, a request without
    one is not serialized, and so not dated: the first POST creates it)."""
    client = make_client()
    assert client.post("/count", form={}).text == "n=1 stale=False"
    return client


def submit(client: SyncClient, shown: Seen, encoding: str = "urlencoded") -> Seen:
    """A browser submits the page's form: its hidden fields as rendered, nothing more."""
    fields = {"session_revision": shown.token} if shown.token is not None else {}
    return client.post("/count", form=fields, encoding=encoding)


# -- 1. the template tags --------------------------------------------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_tags_render_a_hidden_field_and_the_bare_token(
    make_client: type[SyncClient], key: str
) -> None:
    with django_settings(StalePages(), key):
        client = with_session(make_client)
        shown = client.get("/page")
        other = client.get("/page")
    assert shown.status == 200
    assert shown.token is not None, shown.text
    parts = TOKEN.fullmatch(shown.token)
    assert parts is not None, shown.token
    number = parts.group(1)
    # one request, one token: the field and the bare tag agree; the revision is the
    # one the response says the session is at
    assert f'<p id="token">{shown.token}</p>' in shown.text
    assert number == shown.headers["Session-Revision"]
    assert other.token is not None
    assert other.token != shown.token  # a nonce per page
    assert other.token.split(".")[0] == number  # the session did not change


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize(
    "locked",
    [pytest.param(True, id="lock-without-stale_pages"), pytest.param(False, id="no-lock")],
)
@pytest.mark.parametrize("make_client", CLIENTS)
def test_without_stale_pages_the_tags_render_nothing_and_the_page_works(
    make_client: type[SyncClient], locked: bool
) -> None:
    with django_settings(None, locked=locked):
        client = with_session(make_client)
        shown = client.get("/page")
        assert shown.status == 200
        assert "session_revision" not in shown.text
        assert '<p id="token"></p>' in shown.text
        assert '<p id="n">1</p>' in shown.text
        assert "Session-Revision" not in shown.headers
        assert submit(client, shown).text == "n=2 stale=False"


def test_without_a_request_in_the_context_the_tags_render_nothing() -> None:
    with override_settings(TEMPLATES=TEMPLATES):
        text = engines["django"].from_string(PAGE).render({"n": 0})
    assert "<input" not in text
    assert '<p id="token"></p>' in text


# -- 2. a stale form is refused, its view never runs -----------------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make_client", CLIENTS)
@pytest.mark.parametrize(
    "stale", [pytest.param(True, id="stale_pages"), pytest.param(False, id="control")]
)
def test_a_form_from_a_page_the_session_moved_on_from_is_refused(
    stale: bool, make_client: type[SyncClient], key: str, encoding: str
) -> None:
    """The page is shown at n=1; its form is sent (n=2), then sent again from the same page
    (the back button, a second tab): refused, n stays 2. The control, without stale_pages,
    applies it: n=3, the bug this catches."""
    with django_settings(StalePages() if stale else None, key):
        client = with_session(make_client)
        shown = client.get("/page")
        assert (shown.token is not None) is stale
        first = submit(client, shown, encoding)
        second = submit(client, shown, encoding)
        after = client.get("/value")
    assert first.reply == (200, "n=2 stale=False")
    if stale:
        assert second.status == 409
        assert "out of date" in second.text
        assert "no-store" in second.headers["Cache-Control"]
        assert after.text == "2"  # the view did not run
        assert second.headers["Session-Revision"] == after.headers["Session-Revision"]
    else:
        assert second.reply == (200, "n=3 stale=False")
        assert after.text == "3"


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_page_of_the_request_that_changed_the_session_stays_fresh(
    make_client: type[SyncClient],
) -> None:
    """A page rendered by a POST that changed the session carries the revision that POST
    began with: its form is fresh (the only change since was its own). A page rendered
    before it, at the same revision by another request, is stale."""
    with django_settings(StalePages()):
        client = with_session(make_client)
        before = client.get("/page")  # at revision r, n=1
        changed = client.post("/count-and-page", form={})  # r -> r+1, n=2, its page
        assert before.token is not None
        assert changed.token is not None
        assert before.token.split(".")[0] == changed.token.split(".")[0]  # both began at r
        older = submit(client, before)
        own = submit(client, changed)
        again = submit(client, changed)  # its own page, once the session moved on
        after = client.get("/value")
    assert older.status == 409
    assert own.reply == (200, "n=3 stale=False")
    assert again.status == 409
    assert after.text == "3"


# -- 3. the other policies ---------------------------------------------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_policy_redirect_answers_303_to_the_page(make_client: type[SyncClient]) -> None:
    with django_settings(StalePages(policy="redirect", redirect_to="/page")):
        client = with_session(make_client)
        shown = client.get("/page")
        assert submit(client, shown).text == "n=2 stale=False"
        stale = submit(client, shown)
        after = client.get("/value")
    assert stale.status == 303
    assert stale.headers["Location"] == "/page"
    assert after.text == "2"


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_policy_flag_runs_the_view_which_sees_is_stale(make_client: type[SyncClient]) -> None:
    with django_settings(StalePages(policy="flag")):
        client = with_session(make_client)
        shown = client.get("/page")
        fresh = submit(client, shown)
        stale = submit(client, shown)
        after = client.get("/value")
    assert fresh.reply == (200, "n=2 stale=False")
    assert stale.reply == (200, "n=3 stale=True")  # the view ran, and was told
    assert after.text == "3"


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_a_route_policy_applies_under_its_prefix_only(make_client: type[SyncClient]) -> None:
    with django_settings(StalePages(routes={"/flagged/": "flag"})):
        client = with_session(make_client)
        token = client.get("/page").token
        assert token is not None
        form = {"session_revision": token}
        assert client.post("/count", form=form).text == "n=2 stale=False"
        flagged = client.post("/flagged/count", form=form)
        refused = client.post("/count", form=form)
    assert flagged.reply == (200, "n=3 stale=True")
    assert refused.status == 409


# -- 4. the header and the query; no token, no check -----------------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_token_in_the_session_revision_header(
    make_client: type[SyncClient], method: str
) -> None:
    """fetch() with ``Session-Revision: <token>`` and a JSON body: as the form field."""
    with django_settings(StalePages()):
        client = with_session(make_client)
        token = client.get("/page").headers["Session-Revision"]  # what fetch copies
        fetch = [
            client.send(
                method,
                "/count",
                headers={"Session-Revision": token},
                body=b"{}",
                content_type="application/json",
            )
            for _ in "ab"
        ]
        fresh, stale = fetch
        read = client.get("/value", headers={"Session-Revision": token})  # GET: not checked
    assert fresh.reply == (200, "n=2 stale=False")
    assert stale.status == 409
    assert read.reply[1] == "2"


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_token_in_the_query_string(make_client: type[SyncClient]) -> None:
    with django_settings(StalePages()):
        client = with_session(make_client)
        token = client.get("/page").token
        assert token is not None
        fresh = client.post(f"/count?session_revision={token}")
        stale = client.post(f"/count?session_revision={token}")
    assert fresh.reply == (200, "n=2 stale=False")
    assert stale.status == 409


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_a_request_without_a_token_is_never_stale(make_client: type[SyncClient]) -> None:
    """The session moves on between every request here; none carries a token: all applied.
    (The same requests with the page's token: all but the first refused.)"""
    with django_settings(StalePages()):
        client = with_session(make_client)
        shown = client.get("/page")
        assert shown.token is not None
        bare = [client.post("/count", form=f).reply for f in ({}, {}, {"other": "x"})]
        json = client.post(
            "/count", body=b'{"session_revision": "0.0"}', content_type="application/json"
        )
        dated = [client.post("/count", form={"session_revision": shown.token}) for _ in "ab"]
    assert bare == [(200, f"n={n} stale=False") for n in (2, 3, 4)]
    assert json.reply == (200, "n=5 stale=False")  # a JSON body is not looked into
    assert [d.status for d in dated] == [409, 409]


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_view_can_still_read_the_body_the_middleware_looked_into(
    make_client: type[SyncClient],
) -> None:
    """The middleware reads ``request.POST`` for the token (urlencoded): ``request.body``
    stays readable for the view."""
    with django_settings(StalePages()):
        client = with_session(make_client)
        token = client.get("/page").token
        assert token is not None
        fields = {"session_revision": token, "a": "1"}
        answer = client.post("/body-length", form=fields)
    assert answer.reply == (200, str(len(urlencode(fields))))


# -- 5. the Session-Revision and Cache-Control response headers ------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_revision_header_grows_exactly_when_the_session_changed(
    make_client: type[SyncClient], key: str
) -> None:
    with django_settings(StalePages(), key):
        client = with_session(make_client)
        steps = [
            ("GET", "/value"),  # reads: no change
            ("GET", "/page"),
            ("POST", "/touch"),  # a POST that changes nothing
            ("POST", "/count"),  # a change
            ("GET", "/value"),
            ("POST", "/count"),
            ("POST", "/count"),
            ("GET", "/page"),
        ]
        answers = [client.send(method, where) for method, where in steps]
    assert [a.status for a in answers] == [200] * len(steps)
    revisions = [int(a.headers["Session-Revision"]) for a in answers]
    first = revisions[0]
    assert [r - first for r in revisions] == [0, 0, 0, 1, 1, 2, 3, 3]
    for answer in answers:
        assert "no-store" in answer.headers["Cache-Control"], answer.headers


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_cache_control_no_store_only_when_asked_and_never_on_a_public_response(
    make_client: type[SyncClient],
) -> None:
    with django_settings(StalePages(no_store=False)):
        client = with_session(make_client)
        kept = client.get("/page")
    with django_settings(StalePages()):
        public = client.get("/public")
        private = client.get("/page")
    assert "Session-Revision" in kept.headers
    assert "no-store" not in kept.headers.get("Cache-Control", "")
    assert "no-store" not in public.headers["Cache-Control"]
    assert "public" in public.headers["Cache-Control"]
    assert "no-store" in private.headers["Cache-Control"]


# -- 6. the async path: what runs on the event loop ------------------------------------------
#
# ASGI Django runs SessionLockMiddleware on the event loop; SessionMiddleware and the views
# run in a worker thread. The AsyncClient cases above are the async path with the memory
# backend; these two look for blocking calls on the loop (blockbuster raises one there).


@pytest.mark.usefixtures("registry", "no_blocking")
def test_async_stale_refusal_with_a_file_backend_blocks_nothing_on_the_loop(
    tmp_path: Path,
) -> None:
    with django_settings(StalePages(), backend=f"file://{tmp_path / 'locks'}"):
        client = with_session(AsyncDjangoClient)
        shown = client.get("/page")
        fresh = submit(client, shown)
        stale = submit(client, shown)
        after = client.get("/value")
    assert fresh.reply == (200, "n=2 stale=False")
    assert stale.status == 409
    assert after.text == "2"


@pytest.mark.usefixtures("registry", "no_blocking")
def test_async_form_with_a_large_upload_is_parsed_off_the_loop() -> None:
    with django_settings(StalePages()):
        client = with_session(AsyncDjangoClient)
        token = client.get("/page").token
        assert token is not None
        upload = io.BytesIO(b"x" * (settings.FILE_UPLOAD_MAX_MEMORY_SIZE + 1))
        upload.name = "upload.bin"
        body = encode_multipart(BOUNDARY, {"session_revision": token, "file": upload})
        fresh = client.post("/count", body=body, content_type=MULTIPART_CONTENT)
        stale = client.post("/count", body=body, content_type=MULTIPART_CONTENT)
    assert fresh.reply == (200, "n=2 stale=False")
    assert stale.status == 409


# -- a new session key, and forms of other methods -------------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_a_page_from_before_a_new_session_key_is_stale(make_client: type[SyncClient]) -> None:
    """``login()`` gives the session a new key (``cycle_key``), data kept: a page shown
    before it is older than the session."""
    with django_settings(StalePages()):
        client = with_session(make_client)
        shown = client.get("/page")
        assert client.post("/cycle").reply == (200, "in")
        stale = submit(client, shown)
        after = client.get("/value")
    assert stale.status == 409
    assert after.text == "1"


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_form_field_in_the_body_of_other_methods(
    make_client: type[SyncClient], method: str
) -> None:
    with django_settings(StalePages()):
        client = with_session(make_client)
        token = client.get("/page").token
        assert token is not None
        form = {"session_revision": token}
        fresh = client.send(method, "/count", form=form)
        stale = client.send(method, "/count", form=form)
    assert fresh.reply == (200, "n=2 stale=False")
    assert stale.status == 409


# -- the README's Django example -------------------------------------------------------------


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("make_client", CLIENTS)
def test_the_readme_settings_and_template(make_client: type[SyncClient]) -> None:
    """Its settings block and its template, run as they are (the backend aside: memory://
    in this one process); the old form is redirected to the exam, as its policy says."""
    from tests.e2e import readme

    namespace: dict[str, Any] = {}
    readme.run(readme.find(readme.STALE_DJANGO).source, namespace)
    setting = {**namespace["SESSIONLOCK"], "backend": "memory://"}
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[LOCK, SESSION, CSRF],
        SESSION_ENGINE=DB_SESSIONS,
        TEMPLATES=TEMPLATES,
        SESSIONLOCK=setting,
    ):
        client = with_session(make_client)
        shown = client.get("/exam/")
        assert shown.token is not None
        form = {"session_revision": shown.token, "answer": "A"}
        fresh = client.post("/exam/answer/", form=form)
        stale = client.post("/exam/answer/", form=form)
        after = client.get("/value")
    assert fresh.reply == (200, "n=2 stale=False")
    assert (stale.status, stale.headers.get("Location")) == (303, "/exam/")
    assert after.text == "2"
