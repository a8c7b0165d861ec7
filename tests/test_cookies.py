"""Cookie-session tracking: parsing, lifetimes, hostile values, header rewrites, sealed records.

The end-to-end proof with real servers lives in tests/e2e/test_cookie_sessions.py; here each
piece is checked alone, then the whole flow through the real middleware in-process.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionlock import BackendUnavailable, ConfigurationError, cookieheader, cookies, keys
from sessionlock.backends import Backend, Lease, from_url
from sessionlock.backends.file import FileBackend
from sessionlock.backends.memory import MemoryBackend
from sessionlock.cookies import (
    DEFAULT_MAX_TTL,
    NEW_BROWSER_TTL,
    SessionCookies,
    parse_set_cookie,
)
from sessionlock.core import Admission, Core

NOW = 1_700_000_000.0
FLASK = "session=eyJuIjoxfQ.ZkS1Yg.abc-_DEF; HttpOnly; Path=/"
STARLETTE = "session=eyJuIjogMX0=.ZkS1Yg.xyz/+=; path=/; Max-Age=1209600; httponly; samesite=lax"
FLASK_DELETE = "session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/"
STARLETTE_DELETE = "session=null; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly"


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name", "value"),
    [
        pytest.param(FLASK, "session", "eyJuIjoxfQ.ZkS1Yg.abc-_DEF", id="flask"),
        pytest.param(STARLETTE, "session", "eyJuIjogMX0=.ZkS1Yg.xyz/+=", id="starlette"),
        pytest.param(FLASK_DELETE, "session", "", id="flask-delete"),
        pytest.param('s="quoted"; Path=/', "s", '"quoted"', id="quoted-value"),
        pytest.param("  s = v ;Path=/", "s", "v", id="spaces"),
    ],
)
def test_parse_set_cookie_accepts(header: str, name: str, value: str) -> None:
    cookie = parse_set_cookie(header)
    assert cookie is not None
    assert (cookie.name, cookie.value, cookie.header) == (name, value, header)
    assert value not in repr(cookie) or not value  # a credential never shows in a repr


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("session=abc\r\nX-Injected: 1", id="crlf"),
        pytest.param("session=abc\nSet-Cookie: admin=1", id="lf"),
        pytest.param("session=a\x00b", id="nul"),
        pytest.param("session=abc; Path=/\r\n", id="crlf-in-attribute"),
        pytest.param("session=\x7f", id="del"),
        pytest.param("session=caf\u00e9", id="non-ascii"),
        pytest.param("session=a b", id="space-in-value"),
        pytest.param("session=a,b", id="comma-in-value"),
        pytest.param('session=a"b', id="dquote-in-value"),
        pytest.param("session=a\\b", id="backslash-in-value"),
        pytest.param("sess ion=a", id="space-in-name"),
        pytest.param("=a", id="no-name"),
        pytest.param("session", id="no-equals"),
        pytest.param("session=" + "a" * 4090, id="pair-over-4096"),
        pytest.param("session=a; " + "x" * 8200, id="header-over-8k"),
    ],
)
def test_parse_set_cookie_refuses_hostile_values(header: str) -> None:
    assert parse_set_cookie(header) is None


@pytest.mark.parametrize(
    ("header", "lifetime"),
    [
        pytest.param(FLASK, None, id="session-cookie"),
        pytest.param(STARLETTE, 1209600.0, id="max-age"),
        pytest.param(FLASK_DELETE, 0.0, id="max-age-0"),
        pytest.param("s=v; Max-Age=-1", -1.0, id="max-age-negative"),
        pytest.param("s=v; Expires=Wed, 15 Nov 2023 00:13:20 GMT", 7200.0, id="expires"),
        pytest.param(STARLETTE_DELETE, -NOW, id="expires-past"),
        pytest.param(
            "s=v; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT", 60.0, id="max-age-wins"
        ),
        pytest.param("s=v; Max-Age=soon", None, id="max-age-garbage-ignored"),
        pytest.param("s=v; Expires=someday", None, id="expires-garbage-ignored"),
    ],
)
def test_lifetime(header: str, lifetime: float | None) -> None:
    cookie = parse_set_cookie(header)
    assert cookie is not None
    assert cookie.lifetime(NOW) == lifetime


@pytest.mark.parametrize(
    ("cookie_path", "request_path", "sent"),
    [
        pytest.param("/", "/anything", True, id="root"),
        pytest.param("/app", "/app", True, id="same"),
        pytest.param("/app", "/app/x", True, id="below"),
        pytest.param("/app/", "/app/x", True, id="below-slash"),
        pytest.param("/app", "/apple", False, id="prefix-not-segment"),
        pytest.param("/app", "/", False, id="above"),
    ],
)
def test_path_matches(cookie_path: str, request_path: str, sent: bool) -> None:
    cookie = parse_set_cookie(f"s=v; Path={cookie_path}")
    assert cookie is not None
    assert cookie.path_matches(request_path) is sent


# -- the request's Cookie header -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "rewritten"),
    [
        pytest.param(
            "a=1; session=old; b=2", "new", "a=1; session=new; b=2", id="replace-in-place"
        ),
        pytest.param("a=1", "new", "a=1; session=new", id="add"),
        pytest.param(None, "new", "session=new", id="add-to-none"),
        pytest.param(
            "session=x; a=1; session=y", "new", "session=new; a=1", id="duplicates-merged"
        ),
        pytest.param("a=1; session=old", None, "a=1", id="remove"),
        pytest.param("session=old", None, None, id="remove-last"),
        pytest.param(
            "sessions=1; xsession=2",
            "new",
            "sessions=1; xsession=2; session=new",
            id="similar-names",
        ),
    ],
)
def test_rewrite_cookie_header(
    header: str | None, value: str | None, rewritten: str | None
) -> None:
    assert cookieheader.rewrite(header, "session", value) == rewritten


def test_wsgi_header_rewrite_keeps_the_original() -> None:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "HTTP_COOKIE": "a=1; session=old"}
    cookieheader.replace(environ, "a=1; session=new")
    assert environ["HTTP_COOKIE"] == "a=1; session=new"
    assert environ["sessionlock.original_cookie"] == "a=1; session=old"
    cookieheader.replace(environ, None)
    assert "HTTP_COOKIE" not in environ
    assert environ["sessionlock.original_cookie"] == "a=1; session=old"


def test_asgi_header_rewrite_replaces_the_list_not_the_shared_one() -> None:
    shared = [(b"host", b"x"), (b"cookie", b"a=1"), (b"cookie", b"session=old")]
    scope: dict[str, Any] = {"type": "http", "headers": shared}
    assert cookieheader.get(scope) == "a=1; session=old"  # HTTP/2 split cookies join
    cookieheader.replace(scope, "a=1; session=new")
    assert scope["headers"] == [(b"host", b"x"), (b"cookie", b"a=1; session=new")]
    assert shared == [(b"host", b"x"), (b"cookie", b"a=1"), (b"cookie", b"session=old")]
    cookieheader.replace(scope, None)
    assert scope["headers"] == [(b"host", b"x")]
    assert scope["sessionlock.original_cookie"] == "a=1; session=old"


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"key": "cookie:session"}, id="key-is-the-session-cookie"),
        pytest.param({"key": "header:Authorization"}, id="key-is-a-header"),
        pytest.param({"key": "identity:session"}, id="identity-named-like-the-session"),
        pytest.param({"cookie_session": "bad name"}, id="name-not-a-token"),
        pytest.param({"cookie_session": []}, id="no-names"),
    ],
)
def test_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Core(**{"cookie_session": "session", **options})


def test_a_list_of_names_is_tracked() -> None:
    core = Core(cookie_session=["session", "remember"])
    assert isinstance(core.cookies, SessionCookies)
    assert core.cookies.names == ("session", "remember")


# -- the flow, through Core ----------------------------------------------------------------


class Recording(MemoryBackend):
    """A memory backend that remembers what was stored, and for how long."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: list[tuple[str, str, float | None]] = []

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.sets.append((key, value, ttl))
        super().set(key, value, ttl)


def _file_backend(directory: str) -> Backend:
    try:
        return from_url(f"file://{directory}")
    except ConfigurationError as error:  # the file backend lands in its own change
        pytest.skip(f"file:// backend not available yet: {error}")


@pytest.fixture(params=["memory", "file"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    with tempfile.TemporaryDirectory() as directory:
        made = _file_backend(directory)
        try:
            yield made
        finally:
            made.close()


class Browser:
    """Runs requests through Core's hooks as the shells do, and keeps a cookie jar."""

    def __init__(self, core: Core, jar: dict[str, str] | None = None) -> None:
        self.core = core
        self.jar: dict[str, str] = dict(jar or {})
        self.host = "testserver"
        self.https = False

    def environ(self, path: str = "/") -> dict[str, Any]:
        environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
        environ.update(
            HTTP_HOST=self.host, **{"wsgi.url_scheme": "https" if self.https else "http"}
        )
        if self.jar:
            environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        return environ

    def request(
        self, set_cookie: str | None = None, path: str = "/", apply: bool = True
    ) -> tuple[str | None, list[str]]:
        """One request: the session value the app saw, and the Set-Cookies sent back."""
        environ = self.environ(path)
        admission = self.core.admit(environ)
        assert admission is not None
        self.core.enter(admission)
        try:
            self.core.prepare(admission, environ)
            seen = keys.read_cookie(environ, "session")
            app_headers = [("Content-Type", "text/plain")]
            if set_cookie is not None:
                app_headers.append(("Set-Cookie", set_cookie))
            headers = self.core.finish(admission, app_headers)
        finally:
            self.core.leave(admission)
        sent = [v for k, v in headers if k == "Set-Cookie"]
        if apply:
            for header in sent:
                cookie = parse_set_cookie(header)
                assert cookie is not None
                lifetime = cookie.lifetime(NOW)
                if lifetime is not None and lifetime <= 0:
                    self.jar.pop(cookie.name, None)
                else:
                    self.jar[cookie.name] = cookie.value
        return seen, sent


def session_cookies(sent: list[str]) -> list[str]:
    """The tracked cookie's Set-Cookies among ``sent`` (the identity's are checked apart)."""
    return [header for header in sent if header.startswith("session=")]


def tracked(backend: Backend, **options: Any) -> Core:
    core = Core(backend=backend, cookie_session="session", **options)
    assert isinstance(core.cookies, SessionCookies)
    return core


def test_stale_cookie_is_replaced_and_the_browser_converges(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1; Path=/; HttpOnly")
    old = dict(browser.jar)
    seen, sent = browser.request("session=v2; Path=/; HttpOnly")
    assert (seen, session_cookies(sent)) == ("v1", ["session=v2; Path=/; HttpOnly"])
    stale = Browser(browser.core, old)  # a request still carrying v1, e.g. from another tab
    seen, sent = stale.request()
    assert seen == "v2"
    assert session_cookies(sent) == ["session=v2; Path=/; HttpOnly"]
    assert stale.jar["session"] == "v2"
    assert stale.jar["sessionlock"] == browser.jar["sessionlock"]  # the current generation
    assert stale.request() == ("v2", [])  # converged: nothing rewritten, nothing re-sent


def test_app_set_cookie_wins_over_the_resend(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1")
    old = dict(browser.jar)
    browser.request("session=v2")
    seen, sent = Browser(browser.core, old).request("session=v3")
    assert seen == "v2"
    assert session_cookies(sent) == ["session=v3"]
    assert Browser(browser.core, old).request()[0] == "v3"


def test_deletion_is_tracked_and_removes_the_cookie_from_stale_requests(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1; Path=/")
    old = dict(browser.jar)
    browser.request(FLASK_DELETE)
    assert "session" not in browser.jar
    stale = Browser(browser.core, old)
    seen, sent = stale.request()
    assert seen is None
    assert session_cookies(sent) == [FLASK_DELETE]
    assert "session" not in stale.jar
    assert stale.request() == (None, [])


def test_starlette_style_deletion_by_past_expires(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1; path=/")
    old = dict(browser.jar)
    browser.request(STARLETTE_DELETE)
    assert Browser(browser.core, old).request()[0] is None


@pytest.mark.parametrize(
    ("edit", "seen"),
    [
        pytest.param({"session": "edited"}, "edited", id="session-transaction-edits-it"),
        pytest.param({"session": None}, None, id="delete-cookie"),
        pytest.param({"session": "someone-elses"}, "someone-elses", id="swapped-in"),
    ],
)
def test_a_jar_the_client_changed_itself_reaches_the_app_as_sent(
    backend: Backend, edit: dict[str, str | None], seen: str | None
) -> None:
    """What a test (or a user) does to its own, current jar is not a stale replay."""
    browser = Browser(tracked(backend))
    browser.request()
    start = dict(browser.jar)  # the identity at generation 0, no session cookie yet
    browser.request("session=v1")
    browser.request("session=v2")
    for name, value in edit.items():
        if value is None:
            browser.jar.pop(name)
        else:
            browser.jar[name] = value
    assert browser.request() == (seen, [])
    # Control: a jar state this identity really had (no cookie at generation 0) is a replay.
    assert Browser(browser.core, start).request()[0] == "v2"


def test_a_stale_generation_with_a_value_never_issued_is_not_replaced(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1")
    old = dict(browser.jar)
    browser.request("session=v2")
    assert Browser(browser.core, {**old, "session": "forged"}).request()[0] == "forged"
    assert Browser(browser.core, old).request()[0] == "v2"  # control: v1 was issued, replaced


def test_requests_racing_the_first_session_cookie_see_it(backend: Backend) -> None:
    """Two requests sent before any session cookie existed: the second sees the first's."""
    browser = Browser(tracked(backend))
    browser.request()  # the identity, no session yet
    before = dict(browser.jar)
    browser.request("session=v1")
    late = Browser(browser.core, before)  # sent with the jar as it was before v1
    assert late.request()[0] == "v1"


@pytest.mark.parametrize(
    ("set_cookie", "https", "host", "replaced"),
    [
        pytest.param("session=v; Secure", True, "example.com", True, id="secure-over-https"),
        pytest.param("session=v; Secure", False, "example.com", False, id="secure-never-to-http"),
        pytest.param("session=v", False, "example.com", True, id="host-only-same-host"),
        pytest.param("session=v", False, "other.example.com", False, id="host-only-other-host"),
        pytest.param(
            "session=v; Domain=example.com", False, "app.example.com", True, id="domain-subdomain"
        ),
        pytest.param("session=v; Domain=example.com", False, "example.org", False, id="domain-no"),
    ],
)
def test_a_cookie_is_substituted_only_where_the_browser_would_send_it(
    set_cookie: str, https: bool, host: str, replaced: bool
) -> None:
    core = tracked(MemoryBackend())
    browser = Browser(core)
    browser.host, browser.https = "example.com", https
    browser.request()
    before = dict(browser.jar)
    browser.request(set_cookie)
    late = Browser(core, before)
    late.host, late.https = host, https
    seen = late.request()[0]
    assert seen == ("v" if replaced else None)


def test_a_request_without_identity_never_gets_a_stored_cookie(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1")
    browser.request("session=v2")
    stranger = Browser(browser.core, {"session": "v1"})  # no identity cookie
    seen, sent = stranger.request()
    assert seen == "v1"
    assert [s for s in sent if s.startswith("session=")] == []
    forged = Browser(browser.core, {"session": "v1", "sessionlock": "A" * 43})  # never issued
    seen, sent = forged.request()
    assert (seen, session_cookies(sent)) == ("v1", [])


def test_hostile_app_cookie_is_not_stored_and_the_record_is_forgotten(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1")
    old = dict(browser.jar)
    browser.request("session=v2\r\nX-Evil: 1", apply=False)
    assert Browser(browser.core, old).request() == ("v1", [])  # nothing tracked any more


def test_path_scoped_cookie_is_not_handed_to_other_paths(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1; Path=/app", path="/app/x")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/app", path="/app/x")
    assert Browser(browser.core, old).request(path="/other")[0] == "v1"
    assert Browser(browser.core, old).request(path="/app/y")[0] == "v2"


@pytest.mark.parametrize(
    ("set_cookie", "ttl"),
    [
        pytest.param("session=v; Max-Age=600", 600.0, id="max-age"),
        pytest.param("session=v; Max-Age=99999999", DEFAULT_MAX_TTL, id="max-age-capped"),
        pytest.param("session=v; Path=/", DEFAULT_MAX_TTL, id="session-cookie-capped"),
        pytest.param(FLASK_DELETE, DEFAULT_MAX_TTL, id="deletion-kept"),
    ],
)
def test_record_ttl_follows_the_cookie(set_cookie: str, ttl: float) -> None:
    backend = Recording()
    browser = Browser(tracked(backend))
    browser.request()  # a returning browser: its identity was issued before
    browser.request(set_cookie)
    assert [t for _, _, t in backend.sets] == [ttl]


@pytest.mark.parametrize(
    ("returning", "ttl"),
    [
        pytest.param(False, NEW_BROWSER_TTL, id="first-visit-expires-fast"),
        pytest.param(True, DEFAULT_MAX_TTL, id="control-returning-browser"),
    ],
)
def test_a_browser_seen_once_leaves_a_record_that_expires_fast(returning: bool, ttl: float) -> None:
    """20 000 cookie-less requests to a page that writes a CSRF token: 20 000 first visits."""
    backend = Recording()
    browser = Browser(tracked(backend))
    if returning:
        browser.request()
    browser.request("session=csrf")
    assert [t for _, _, t in backend.sets] == [ttl]


def test_resend_shortens_max_age_by_the_time_elapsed() -> None:
    backend = MemoryBackend()
    now = [NOW]
    core = tracked(backend)
    assert isinstance(core.cookies, SessionCookies)
    core.cookies._clock = lambda: now[0]
    browser = Browser(core)
    browser.request("session=v1; Path=/; Max-Age=1000; HttpOnly")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/; Max-Age=1000; HttpOnly")
    now[0] += 400
    sent = Browser(core, old).request()[1]
    assert session_cookies(sent) == ["session=v2; Path=/; Max-Age=600; HttpOnly"]


class RecordingFile(FileBackend):
    """A file backend that remembers what was stored (as a key's first value, or under its
    lease), and can put a record in place as a writer would."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        assert self.swept.wait(30)  # no start sweep locking a file behind a test's back
        self.sets: list[tuple[str, str, float | None]] = []

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.sets.append((key, value, ttl))
        super().set(key, value, ttl)

    def store(self, lease: Lease, value: str | None, ttl: float | None) -> int | None:
        if value is not None:
            self.sets.append((lease.key, value, ttl))
        return super().store(lease, value, ttl)


def put_record(backend: FileBackend, key: str, value: str) -> None:
    """Replace ``key``'s record under a lease of its own, as another writer would, through
    FileBackend's own store (a test subclass records nothing of it)."""
    lease = backend.try_acquire(key)
    assert lease is not None
    try:
        FileBackend.store(backend, lease, value, None)
    finally:
        backend.release(lease)


def test_records_are_sealed_and_bound_to_identity(tmp_path: Path) -> None:
    backend = RecordingFile(str(tmp_path / "locks"))
    core = tracked(backend)
    one, two = Browser(core), Browser(core)
    one.request("session=SECRETVALUE1a")
    one_old = dict(one.jar)
    one.request("session=SECRETVALUE1b")
    two.request("session=SECRETVALUE2a")
    two_old = dict(two.jar)
    two.request("session=SECRETVALUE2b")
    key_one, key_two = backend.sets[1][0], backend.sets[3][0]
    value_one = backend.sets[1][1]
    assert {key for key, _, _ in backend.sets} == {key_one, key_two}
    for key, value, _ in backend.sets:
        assert "SECRETVALUE" not in value
        for jar in (one.jar, two.jar):
            assert jar["sessionlock"][:43] not in key + value  # the raw identity: never

    # Read by a middleware that has not cached them (as another process would; the writer
    # marked nothing when the records below were swapped behind its back).
    def reader() -> Core:
        return tracked(backend)

    # Control: an intact record makes a stale replay see the latest value.
    assert Browser(reader(), one_old).request()[0] == "SECRETVALUE1b"
    # Moved under another identity's key, it does not open there: the replay goes as sent.
    put_record(backend, key_two, value_one)
    assert Browser(reader(), two_old).request()[0] == "SECRETVALUE2a"
    # Tampered anywhere (nonce, ciphertext, tag), it is ignored.
    raw = bytes.fromhex(value_one)
    for at in (0, len(raw) // 2, len(raw) - 1):
        tampered = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :]
        put_record(backend, key_one, tampered.hex())
        assert Browser(reader(), one_old).request()[0] == "SECRETVALUE1a"
    backend.close()


def test_memory_records_are_not_encrypted_file_records_are(tmp_path: Path) -> None:
    """Encrypting what never leaves the process would hide nothing from that process."""
    memory, on_disk = Recording(), RecordingFile(str(tmp_path / "locks"))
    for backend in (memory, on_disk):
        Browser(tracked(backend)).request("session=VISIBLE")
    assert "VISIBLE" in memory.sets[0][1]
    assert "VISIBLE" not in on_disk.sets[0][1]
    on_disk.close()


def test_a_backend_that_cannot_store_degrades_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Full(MemoryBackend):
        def set(self, key: str, value: str, ttl: float | None) -> None:
            raise BackendUnavailable("no space left on device")

    caplog.set_level(logging.WARNING, logger="sessionlock")
    browser = Browser(tracked(Full()))
    for value in ("v1", "v2", "v3"):
        _, sent = browser.request(f"session={value}")  # never raises: the response goes out
        assert session_cookies(sent) == [f"session={value}"]
    assert len([r for r in caplog.records if "could not record" in r.getMessage()]) == 1


def test_records_do_not_survive_another_secret() -> None:
    backend = MemoryBackend()
    browser = Browser(tracked(backend, secret="s" * 32))
    browser.request("session=v1")
    browser.request("session=v2")
    other = Browser(tracked(backend, secret="t" * 32), {**browser.jar, "session": "v1"})
    assert other.request()[0] == "v1"


# -- through the real middleware and frameworks, in-process --------------------------------


def _flask_app() -> Any:
    import flask

    from sessionlock.wsgi import SessionLockMiddleware

    app = flask.Flask(__name__)
    app.secret_key = "test-secret-key-" * 2

    @app.get("/incr")
    def incr() -> str:
        flask.session["n"] = flask.session.get("n", 0) + 1
        return str(flask.session["n"])

    @app.get("/read")
    def read() -> str:
        return str(flask.session.get("n", 0))

    app.wsgi_app = SessionLockMiddleware(app.wsgi_app, cookie_session="session")  # type: ignore[method-assign]
    return app


def _wsgi_get(app: Any, path: str, jar: dict[str, str]) -> str:
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "HTTP_COOKIE": "; ".join(f"{k}={v}" for k, v in jar.items()),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    sent: list[list[tuple[str, str]]] = []
    result = app(environ, lambda status, headers, exc_info=None: sent.append(headers))
    try:
        body = b"".join(result)
    finally:
        result.close()
    _apply(jar, [v for k, v in sent[-1] if k == "Set-Cookie"])
    return body.decode()


def _apply(jar: dict[str, str], set_cookies: list[str]) -> None:
    for header in set_cookies:
        cookie = parse_set_cookie(header)
        assert cookie is not None
        lifetime = cookie.lifetime(NOW)
        if lifetime is not None and lifetime <= 0:
            jar.pop(cookie.name, None)
        else:
            jar[cookie.name] = cookie.value


def test_flask_in_process_stale_replay_sees_the_latest_state() -> None:
    app = _flask_app()
    jar: dict[str, str] = {}
    assert _wsgi_get(app, "/incr", jar) == "1"
    old = dict(jar)
    assert _wsgi_get(app, "/incr", jar) == "2"
    assert _wsgi_get(app, "/incr", old) == "3"  # the old cookie: the app still starts at 2
    assert _wsgi_get(app, "/read", jar) == "3"  # and the other copy of the jar converges


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sessionlock.asgi import SessionLockMiddleware

    async def incr(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    return Starlette(
        routes=[Route("/incr", incr)],
        middleware=[
            Middleware(SessionLockMiddleware, cookie_session="session"),
            Middleware(SessionMiddleware, secret_key="test-secret-key-" * 2),
        ],
    )


async def _asgi_get(app: Any, path: str, jar: dict[str, str]) -> str:
    headers = [(b"host", b"testserver")]
    if jar:
        headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in jar.items()).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    _apply(jar, [v.decode() for k, v in sent[0]["headers"] if k.lower() == b"set-cookie"])
    return b"".join(m.get("body", b"") for m in sent[1:]).decode()


def test_starlette_in_process_stale_replay_sees_the_latest_state() -> None:
    async def scenario() -> tuple[str, str, str]:
        app = _starlette_app()
        jar: dict[str, str] = {}
        first = await _asgi_get(app, "/incr", jar)
        old = dict(jar)
        second = await _asgi_get(app, "/incr", jar)
        third = await _asgi_get(app, "/incr", old)
        return first, second, third

    assert asyncio.run(scenario()) == ("1", "2", "3")


def test_admission_notes_say_the_browser_was_stale() -> None:
    core = tracked(MemoryBackend())
    browser = Browser(core)
    browser.request("session=v1")
    old = dict(browser.jar)
    browser.request("session=v2")
    environ = Browser(core, old).environ()
    admission = core.admit(environ)
    assert isinstance(admission, Admission)
    core.enter(admission)  # prepare runs under the lease
    try:
        core.prepare(admission, environ)
    finally:
        core.leave(admission)
    assert admission.notes is not None
    state: Any = admission.notes["cookies"]
    assert list(state.stale) == ["session"]


def test_a_generation_the_client_changed_gets_a_fresh_identity_and_nothing_else() -> None:
    core = tracked(MemoryBackend())
    browser = Browser(core)
    browser.request()
    start = dict(browser.jar)
    browser.request("session=v1")
    identity, _, rest = start["sessionlock"].partition(".")
    forged = Browser(core, {"sessionlock": f"{identity}.5.{rest.partition('.')[2]}"})
    seen, sent = forged.request()
    assert (seen, session_cookies(sent)) == (None, [])  # not adopted: nothing handed
    assert forged.jar["sessionlock"].partition(".")[0] != identity
    assert Browser(core, start).request()[0] == "v1"  # control: the issued value is a replay


def test_nothing_is_re_sent_on_a_publicly_cacheable_response() -> None:
    core = tracked(MemoryBackend())
    browser = Browser(core)
    browser.request("session=v1")
    old = dict(browser.jar)
    browser.request("session=v2")
    stale = Browser(core, old)
    admission = core.admit(stale.environ())
    assert admission is not None
    core.enter(admission)
    try:
        core.prepare(admission, {**stale.environ()})
        public = core.finish(admission, [("Cache-Control", "public, max-age=60")])
        assert [k for k, _ in public if k == "Set-Cookie"] == []
    finally:
        core.leave(admission)
    # Control: the same stale browser on a private response converges.
    assert session_cookies(stale.request()[1]) == ["session=v2"]


def test_the_asgi_shell_leaves_the_loop_only_for_a_record_read_or_written(tmp_path: Path) -> None:
    """A thread hop per request would reorder concurrent requests for nothing: only a
    returning browser's prepare reads, only a tracked Set-Cookie (or a rotation) writes."""
    backend = FileBackend(str(tmp_path / "locks"))
    core = tracked(backend)
    fresh = core.admit({"REQUEST_METHOD": "GET", "PATH_INFO": "/"})
    assert fresh is not None
    assert not core.loads(fresh, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"})  # no record yet
    assert not core.stores(fresh, [(b"content-type", b"text/plain")])
    assert core.stores(fresh, [(b"Set-Cookie", b"session=v1; Path=/")])
    assert not core.stores(fresh, [(b"set-cookie", b"other=v1; Path=/")])
    browser = Browser(core)
    browser.request()
    again = core.admit(browser.environ())
    assert again is not None
    assert core.loads(again, browser.environ())
    assert not tracked(MemoryBackend()).loads(again, browser.environ())  # memory://: never
    backend.close()


# -- unchanged records are not rewritten ---------------------------------------------------


def test_a_cookie_issued_again_unchanged_is_not_rewritten(tmp_path: Path) -> None:
    backend = RecordingFile(str(tmp_path / "locks"))
    browser = Browser(tracked(backend))
    browser.request()  # a returning browser: its identity was issued before
    browser.request("session=v1; Path=/; HttpOnly")
    assert len(backend.sets) == 1
    for _ in range(5):
        browser.request("session=v1; Path=/; HttpOnly")
    assert len(backend.sets) == 1
    # Controls: a new value, other attributes, another host: each is a change, written.
    browser.request("session=v2; Path=/; HttpOnly")
    assert len(backend.sets) == 2
    browser.request("session=v2; Path=/; HttpOnly; SameSite=Lax")
    assert len(backend.sets) == 3
    browser.host = "other.example"
    browser.request("session=v2; Path=/; HttpOnly; SameSite=Lax")
    assert len(backend.sets) == 4
    backend.close()


def test_a_replay_older_than_the_lineage_remembers_is_still_handed_the_latest(
    backend: Backend,
) -> None:
    """A request that waited behind more writes than the lineage keeps (deep queues over
    several worker processes: a real uvicorn --workers 4 run lost 18 of 40 this way) is a
    replay all the same: a browser's generation only grows."""
    browser = Browser(tracked(backend))
    browser.request("session=v1; Path=/")
    ancient = dict(browser.jar)
    browser.request("session=v2; Path=/")
    recent = dict(browser.jar)
    for n in range(3, cookies._LINEAGE + 4):
        browser.request(f"session=v{n}; Path=/")
    latest = f"v{cookies._LINEAGE + 3}"
    assert Browser(browser.core, ancient).request()[0] == latest  # beyond the lineage
    assert Browser(browser.core, recent).request()[0] == latest  # within it (control)
    # A jar the client changed itself is told apart within the lineage only: as sent.
    changed = {**browser.jar, "session": "edited-by-a-test"}
    assert Browser(browser.core, changed).request()[0] == "edited-by-a-test"


def test_a_server_side_session_id_re_issued_with_a_new_expiry_is_not_rewritten(
    tmp_path: Path,
) -> None:
    """Flask-Session and the like re-send their unchanged id with a later Expires on every
    response: tracking "session" by default must not cost them a write each time."""
    backend = RecordingFile(str(tmp_path / "locks"))
    browser = Browser(tracked(backend))
    browser.request()

    def issued(second: int) -> str:
        return f"session=ID; Expires=Wed, 01 Jan 2031 00:00:{second:02d} GMT; HttpOnly; Path=/"

    browser.request(issued(0))
    assert len(backend.sets) == 1
    for second in range(1, 6):
        browser.request(issued(second))
    assert len(backend.sets) == 1
    # Controls: the same id deleted, or with another attribute, is a change: written.
    browser.request("session=ID; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Path=/")
    assert len(backend.sets) == 2
    browser.request(issued(7).replace("; HttpOnly", ""))
    assert len(backend.sets) == 3
    backend.close()


def test_a_stale_replay_sees_the_latest_cookie_after_unchanged_reissues(backend: Backend) -> None:
    browser = Browser(tracked(backend))
    browser.request("session=v1; Path=/")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/")
    for _ in range(3):
        browser.request("session=v2; Path=/")  # not rewritten
    assert Browser(browser.core, old).request()[0] == "v2"
    browser.request("session=v1; Path=/")  # back to v1: a change again, recorded
    assert Browser(browser.core, old).request()[0] == "v1"


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        pytest.param("session=v; Path=/; Max-Age=1000", 1000.0, id="max-age"),
        pytest.param("session=v; Path=/", DEFAULT_MAX_TTL, id="session-cookie"),
        pytest.param(FLASK_DELETE, DEFAULT_MAX_TTL, id="deletion"),
    ],
)
def test_an_unchanged_record_is_extended_once_half_its_time_is_gone(
    header: str, ttl: float
) -> None:
    backend = Recording()
    now = [NOW]
    core = tracked(backend)
    assert isinstance(core.cookies, SessionCookies)
    core.cookies._clock = lambda: now[0]
    browser = Browser(core)
    browser.request()
    browser.request(header)  # written: expires at NOW + ttl
    assert [t for _, _, t in backend.sets] == [ttl]
    now[0] += ttl / 2 - 1
    browser.request(header)  # more than half the ttl left: not written
    assert [t for _, _, t in backend.sets] == [ttl]
    now[0] += 2
    browser.request(header)  # less than half left: written, for the whole ttl again
    assert [t for _, _, t in backend.sets] == [ttl, ttl]
    now[0] += ttl / 2 - 1
    browser.request(header)
    assert [t for _, _, t in backend.sets] == [ttl, ttl]


def test_a_first_visit_record_is_extended_by_the_next_write_even_unchanged() -> None:
    """A browser seen once has a record for minutes only: its return keeps it a day."""
    backend = Recording()
    browser = Browser(tracked(backend))
    browser.request("session=csrf; Path=/")
    browser.request("session=csrf; Path=/")
    assert [t for _, _, t in backend.sets] == [NEW_BROWSER_TTL, DEFAULT_MAX_TTL]
    browser.request("session=csrf; Path=/")
    assert len(backend.sets) == 2


def test_flask_re_issuing_its_signed_cookie_writes_every_new_value(tmp_path: Path) -> None:
    """A permanent Flask session is re-issued on every response, re-signed with the second:
    each new value is written, and only a response that repeats the last header is not."""
    import flask

    from sessionlock.wsgi import SessionLockMiddleware

    backend = RecordingFile(str(tmp_path / "locks"))
    app = flask.Flask(__name__)
    app.secret_key = "test-secret-key-" * 2

    @app.get("/incr")
    def incr() -> str:
        flask.session.permanent = True
        flask.session["n"] = flask.session.get("n", 0) + 1
        return str(flask.session["n"])

    @app.get("/read")
    def read() -> str:
        return str(flask.session.get("n", 0))

    issued: list[str] = []
    tracking = SessionLockMiddleware(app.wsgi_app, cookie_session="session", backend=backend)

    def capture(environ: Any, start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            issued.extend(v for k, v in headers if k == "Set-Cookie" and v.startswith("session="))
            return start_response(status, headers, exc_info)

        return tracking(environ, start)

    app.wsgi_app = capture  # type: ignore[method-assign]
    jar: dict[str, str] = {}
    assert _wsgi_get(app, "/incr", jar) == "1"  # a first visit
    assert _wsgi_get(app, "/incr", jar) == "2"  # its return: the record kept a day
    assert len(backend.sets) == 2
    before = len(issued)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert _wsgi_get(app, "/read", jar) == "2"
        time.sleep(0.02)
    headers = issued[before - 1 :]
    changes = sum(1 for last, new in itertools.pairwise(headers) if new != last)
    assert len(headers) - 1 > changes >= 2  # repeats within a second, new values across
    assert len(backend.sets) == 2 + changes
    backend.close()
