"""How many threads of a process may wait for their session: fair to the other sessions.

A thread-based server has a fixed pool of threads per process (waitress: ``threads``,
gunicorn gthread: ``--threads``, gunicorn sync: 1). A request that waits for its session
holds one of them, and the request it waits for holds another: left alone, one user's
slow request and a burst of its queued siblings take every thread, and other users wait
for a session they do not share. So at most :func:`waiting_threads_for` threads of a
process wait at once, which keeps waiters plus the holders they wait for below the pool
size: a request of another session always finds a thread. A request that would exceed it
is answered at once with 429 and ``Retry-After``.

Asyncio servers are not concerned: a waiting task costs no thread.
"""

from __future__ import annotations

import sys

__all__ = ["server_threads", "waiting_threads_for"]


def waiting_threads_for(threads: int) -> int:
    """The cap for a process of ``threads`` server threads: ``(threads - 1) // 2``.

    Each waited-for session costs at most one waiting thread plus its holder, so with ``w``
    waiters at most ``2 w`` threads are taken by sessions that are waited for; ``2 w <=
    threads - 1`` leaves one for everybody else. One thread per process (gunicorn sync,
    a prefork server): 0, a request whose session is busy is refused rather than blocking
    the whole process.
    """
    return max(0, (threads - 1) // 2)


def server_threads() -> int | None:
    """The thread count of the server calling us, when it is one we know (waitress), else None.

    Looked up in the calling frames, once per middleware (the caller caches it): waitress
    hands the app no configuration, but its task, up the stack, carries the server's.
    gunicorn tells :mod:`sessionlock.gunicorn` through its configuration instead.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not None and type(owner).__module__ == "waitress.task":
            threads = getattr(getattr(getattr(owner, "channel", None), "server", None), "adj", None)
            count = getattr(threads, "threads", None)
            if isinstance(count, int) and count > 0:
                return count
        frame = frame.f_back  # type: ignore[assignment]
    return None
