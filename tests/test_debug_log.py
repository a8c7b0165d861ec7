"""DEBUG lines on the ``sessionlock`` logger: one per decision about a request, never a
credential (raw identity, cookie values); nothing at INFO and above per request."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sessionlock.backends.file import FileBackend
from sessionlock.core import Core

from .test_cookies import Browser, tracked


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "sessionlock" and r.levelno == level
    ]


def test_each_decision_is_a_debug_line_without_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FileBackend(str(tmp_path / "locks"))
    core = tracked(backend)
    caplog.set_level(logging.DEBUG, logger="sessionlock")
    browser = Browser(core)
    browser.request("session=SECRETVALUE1; Path=/")
    old = dict(browser.jar)
    browser.request("session=SECRETVALUE2; Path=/")
    Browser(core, old).request()  # a stale replay
    lines = _lines(caplog, logging.DEBUG)
    text = "\n".join(lines)
    assert "admitted (new browser)" in text
    assert "admitted (known)" in text
    assert "released" in text
    assert "cookie record written (generation 2)" in text
    assert "a stale replay (jar generation 1 of 2): handed the latest session" in text
    identity = old["sessionlock"].partition(".")[0]
    assert identity not in text
    assert "SECRETVALUE" not in text
    backend.close()


def test_nothing_per_request_above_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    core = Core(backend=f"file://{tmp_path / 'locks'}")
    caplog.set_level(logging.INFO, logger="sessionlock")
    caplog.clear()  # the one start-up INFO line is not per request
    browser = Browser(core)
    for _ in range(3):
        browser.request("session=v; Path=/")
    assert _lines(caplog, logging.INFO) == []
    assert _lines(caplog, logging.DEBUG) == []  # control: below the level, none is made
