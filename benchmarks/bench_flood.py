"""Flood: 20 000 cookie-less visitors each leave a record for 24 h; what stays behind?

    .venv/bin/python -m benchmarks.bench_flood [--quick]

A page that puts a CSRF token in the session makes cookie tracking ``set`` one record per new
browser identity, with a 24 h TTL. This sets 20 000 distinct keys (2 000 with ``--quick``)
on ``memory://`` and on ``file://`` (a fresh directory under the system temp dir), with
records of the size cookie tracking writes (about 300 bytes). After each flood: values
stored, files and disk bytes (``st_blocks``) in the directory, RSS growth after
``gc.collect()``, the worst single ``set``, and, for ``file://``, how long a new backend on
the flooded directory takes to start (the start sweep). Target: values and files within the
cap (``max_values``, 10 000 by default), worst ``set`` < 10 ms
(it no longer grows with the directory), start < 50 ms.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from sessionlock.backends.base import Backend
from sessionlock.backends.file import FileBackend
from sessionlock.backends.memory import MemoryBackend

from ._table import parse_args, print_table, rss_bytes

TTL = 24 * 3600.0
RECORD = "x" * 300


def flood(backend: Backend, n: int) -> float:
    """Set ``n`` distinct keys; the worst single ``set`` in ms."""
    worst = 0.0
    for i in range(n):
        start = time.perf_counter()
        backend.set(f"{i:064x}", RECORD, TTL)
        worst = max(worst, time.perf_counter() - start)
    return worst * 1000


def usage(directory: str) -> tuple[int, int]:
    """(files, bytes on disk) under ``directory``, its subdirectories included."""
    files = size = 0
    for root, _, names in os.walk(directory):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(root, name)).st_blocks * 512
    return files, size


def stored(backend: Backend) -> str:
    return str(len(backend)) if isinstance(backend, MemoryBackend) else "-"


def run(make: Callable[[], Backend], directory: str | None, n: int) -> list[str]:
    gc.collect()
    before = rss_bytes()
    backend = make()
    worst = flood(backend, n)
    gc.collect()
    growth = (rss_bytes() - before) / 1e6
    files, size = usage(directory) if directory else (0, 0)
    start_ms = "-"
    if directory:
        begin = time.perf_counter()
        FileBackend(directory).close()
        start_ms = f"{(time.perf_counter() - begin) * 1000:.1f}"
    row = [
        "file://" if directory else "memory://",
        str(n),
        stored(backend),
        str(files) if directory else "-",
        f"{size / 1e6:.1f}" if directory else "-",
        f"{growth:.1f}",
        f"{worst:.2f}",
        start_ms,
    ]
    backend.close()
    return row


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    n = 2_000 if args.quick else 20_000
    parent = tempfile.mkdtemp(prefix="bench-flood-")
    directory = os.path.join(parent, "locks")
    try:
        rows = [
            run(MemoryBackend, None, n),
            run(lambda: FileBackend(directory), directory, n),
        ]
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    headers = ["backend", "keys set", "values", "files", "disk MB", "RSS +MB", "worst set ms"]
    print_table([*headers, "start ms"], rows)


if __name__ == "__main__":
    main()
