"""Stale pages: what keeping a session revision costs a request, in process.

    .venv/bin/python -m benchmarks.bench_stale [--quick]

The same minimal Flask and Starlette handlers as ``bench_overhead``, wrapped with and without
``stale_pages=StalePages()``, on memory:// and file://, timed in interleaved rounds (the
median over rounds of the per-round difference). A returning browser's GET: the revision is
read under the lease and the two headers (Session-Revision, Cache-Control) added; nothing
is written, since a GET that changes nothing leaves the revision alone. On ASGI with file://
the read goes to a worker thread (never file I/O on the event loop): that hop is most of it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable

from sessionlock import asgi, wsgi
from sessionlock.backends import from_url
from sessionlock.stale import StalePages

from ._figures import Figure, print_figures
from ._table import measure, median, parse_args
from .bench_overhead import SECRET, asgi_batch, flask_app, starlette_app, wsgi_batch

Batch = Callable[[int], float]


def run(quick: bool) -> dict[str, dict[str, list[float]]]:
    rounds, n = (7, 1000) if quick else (11, 3000)
    directory = tempfile.mkdtemp(prefix="sessionlock-bench-stale-")
    backends = {"memory": from_url("memory://"), "file": from_url(f"file://{directory}")}
    loop = asyncio.new_event_loop()
    try:
        flask, star = flask_app(), starlette_app()
        results: dict[str, dict[str, list[float]]] = {}
        for shell in ("WSGI", "ASGI"):
            variants: dict[str, Batch] = {}
            for name, backend in backends.items():
                for pages in (None, StalePages()):
                    label = f"{name}, {'revisions' if pages else 'none'}"
                    options = {"backend": backend, "secret": SECRET, "stale_pages": pages}
                    if shell == "WSGI":
                        app = wsgi.SessionLockMiddleware(flask.wsgi_app, **options)  # type: ignore[arg-type]
                        variants[label] = wsgi_batch(app)
                    else:
                        wrapped = asgi.SessionLockMiddleware(star, **options)  # type: ignore[arg-type]
                        variants[label] = asgi_batch(wrapped, loop)
            results[shell] = measure(variants, rounds=rounds, n=n)
        return results
    finally:
        loop.close()
        for backend in backends.values():
            backend.close()
        shutil.rmtree(directory, ignore_errors=True)


def figures_from(results: dict[str, dict[str, list[float]]]) -> list[Figure]:
    out = []
    for shell, times in results.items():
        for backend in ("memory", "file"):
            without, with_ = times[f"{backend}, none"], times[f"{backend}, revisions"]
            added = median([w - o for w, o in zip(with_, without, strict=True)])
            out.append(
                Figure(
                    f"revision cost per request, {shell}, {backend}://",
                    f"+{added:.2f} µs ({median(with_):.2f} µs/request)",
                    f"without stale_pages {median(without):.2f} µs",
                    "reported",
                    None,
                )
            )
    return out


def figures(quick: bool) -> list[Figure]:
    return figures_from(run(quick))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    print("stale_pages: a returning browser's GET, with and without revisions, medians")
    print_figures(figures(args.quick))


if __name__ == "__main__":
    main()
