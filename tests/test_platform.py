"""Without fcntl (Windows): ``import sessionlock`` works, and file:// says what to use instead.

Windows is simulated in a fresh interpreter: ``fcntl`` blocked in ``sys.modules`` (an import
of it raises ModuleNotFoundError, as there) and ``os.fork`` and ``os.register_at_fork``
removed (Windows has neither). The interpreter is a subprocess so that no module of this
test run is re-imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WINDOWS_LIKE = """
import os, sys
sys.modules["fcntl"] = None
del os.register_at_fork, os.fork
"""


def _run(body: str) -> dict[str, object]:
    """Run ``body`` (which sets ``result``) in an interpreter without fcntl; its result."""
    script = WINDOWS_LIKE + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_the_package_and_its_shells_import_without_fcntl() -> None:
    result = _run(
        """
        import sessionlock, sessionlock.wsgi, sessionlock.asgi, sessionlock.backends.memory
        import sessionlock.backends.redis
        result = {"fcntl": "fcntl" in sys.modules and sys.modules["fcntl"] is not None,
                  "file": "sessionlock.backends.file" in sys.modules}
        """
    )
    assert result == {"fcntl": False, "file": False}


def test_memory_backend_serves_without_fcntl() -> None:
    result = _run(
        """
        from sessionlock.wsgi import SessionLockMiddleware

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        wrapped = SessionLockMiddleware(app, backend="memory://", key="cookie:sid")
        statuses = []
        body = b"".join(wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                                 "HTTP_COOKIE": "sid=abc", "wsgi.url_scheme": "http"},
                                lambda status, headers, exc_info=None: statuses.append(status)))
        result = {"status": statuses, "body": body.decode()}
        """
    )
    assert result == {"status": ["200 OK"], "body": "ok"}


def test_file_backend_and_the_default_raise_configuration_error_naming_the_alternatives() -> None:
    result = _run(
        """
        from sessionlock import ConfigurationError, from_url
        from sessionlock.wsgi import SessionLockMiddleware

        messages = []
        for attempt in (lambda: from_url("file:///tmp/x"),
                        lambda: SessionLockMiddleware(lambda e, s: [])):  # the default
            try:
                attempt()
            except ConfigurationError as error:
                messages.append(str(error))
        result = {"messages": messages}
        """
    )
    messages = result["messages"]
    assert isinstance(messages, list)
    assert len(messages) == 2
    for message in messages:
        assert "fcntl" in message
        assert "memory://" in message
        assert "redis://" in message
        assert "one process" in message


def test_with_fcntl_the_file_backend_is_unaffected(tmp_path: Path) -> None:
    # The control: the same calls in this (Linux) interpreter take the file backend.
    from sessionlock.backends import file

    backend = file.from_url(f"file://{tmp_path}/locks")
    try:
        lease = backend.try_acquire("a" * 64)
        assert lease is not None
        backend.release(lease)
    finally:
        backend.close()
