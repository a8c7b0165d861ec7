"""``sessionlock held BACKEND_URL``: the sessions a shared backend holds now, and who waits.

    $ sessionlock held file:///var/lib/myapp/sessionlock
    KEY (keyed hash)                                                  HELD       READERS  QUEUED
    5b1f...e0                                                         exclusive  -        1

Keys are the keyed hashes the backend stores, never session ids. ``QUEUED`` counts the
processes in the backend's line for a key: each process's further requests of that key wait
behind its own, inside it, where no other process can see them. ``memory://`` keeps its
locks inside each process: there is nothing to list from outside (exit status 2).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO
from urllib.parse import urlsplit

from .backends.base import HeldKey
from .errors import SessionLockError

__all__ = ["format_held", "held", "run"]

_REDIS = ("redis", "rediss", "unix")


def held(url: str) -> list[HeldKey]:
    """The keys held or queued for in the backend ``url`` names (file:// or redis://)."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from .backends import file

        return file.held_keys(url)
    if scheme in _REDIS:
        from .backends.redis import RedisBackend

        backend = RedisBackend(url)  # not the registry's: closed right after
        try:
            return backend.held_keys()
        finally:
            backend.close()
    if scheme == "memory":
        raise _PerProcess
    raise _Unsupported(f"not a backend URL sessionlock can list: {url!r} (file://, redis://)")


class _PerProcess(Exception):
    """memory:// keeps its locks inside each process."""


class _Unsupported(Exception):
    pass


def format_held(keys: Sequence[HeldKey]) -> str:
    """The table ``sessionlock held`` prints."""
    width = max([len("KEY (keyed hash)"), *(len(k.key) for k in keys)])
    lines = [f"{'KEY (keyed hash)':<{width}}  {'HELD':<9}  READERS  QUEUED"]
    for item in keys:
        readers = "-" if item.readers is None else str(item.readers)
        lines.append(f"{item.key:<{width}}  {item.mode:<9}  {readers:<7}  {item.queued}")
    return "\n".join(lines)


def run(url: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The command: 0 (listed, maybe nothing), 2 (memory://, a bad URL, no backend)."""
    try:
        keys = held(url)
    except _PerProcess:
        print(
            "memory:// keeps its locks inside each process: nothing to list from outside "
            "(use file:// or redis:// to share them, and to list them)",
            file=err,
        )
        return 2
    except (_Unsupported, SessionLockError) as error:
        print(f"error: {error}", file=err)
        return 2
    if not keys:
        print("no session held, nobody queued", file=out)
        return 0
    holding = sum(k.mode != "free" for k in keys)
    queued = sum(k.queued for k in keys)
    print(format_held(keys), file=out)
    print(
        f"{holding} held, {queued} queued (QUEUED: processes in the backend's line; each "
        "process's further requests of a key wait behind its own)",
        file=out,
    )
    return 0
