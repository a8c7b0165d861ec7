"""Shared fixtures.

``registry``: the test starts with an empty backend registry (``sessionlock.backends.from_url``
makes new backends) and what it registered is closed after it; the process's own registry,
which other tests' middleware may still use, is left alone.

``no_blocking``: blockbuster is active for the test, so a blocking call (``os.stat``, a file
read, ``time.sleep``, a socket or sqlite call, a wait on a held ``threading.Lock``...) made on
a thread that runs an event loop raises ``blockbuster.BlockingError`` there. ASGI test
modules opt in with ``pytestmark = pytest.mark.usefixtures("no_blocking")``.

What it patches is blockbuster's own list (see its ``_get_*_wrapped_functions``): ``os.open``,
``os.fstat``, ``os.lstat`` and ``fcntl.flock`` are not on it, so a clean run does not prove
the absence of every system call, only of those.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from sessionlock.backends import _shared, close_all

try:
    from blockbuster import blockbuster_ctx
except ImportError:  # a framework's tox environment (tox.ini) installs no more than it needs
    blockbuster_ctx = None

if TYPE_CHECKING:
    from blockbuster import BlockBuster

#: Seconds the process may take to exit once the run is over.
EXIT_WITHIN = 120


def pytest_unconfigure(config: pytest.Config) -> None:
    """A failed test may leave a thread of its own waiting on a lock nobody gives back: a
    non-daemon one keeps the interpreter from exiting, and CI waits for it until its hard
    limit. Instead, if the process is still here EXIT_WITHIN seconds after the run, every
    thread's stack is printed (naming the culprit) and it exits with status 1."""
    faulthandler.dump_traceback_later(EXIT_WITHIN, exit=True, file=sys.__stderr__)


@pytest.fixture
def no_blocking() -> Iterator[BlockBuster]:
    if blockbuster_ctx is None:
        pytest.skip("blockbuster is not installed")
    with blockbuster_ctx() as blockbuster:
        yield blockbuster


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_shared, "_backends", {})
    yield
    close_all()
