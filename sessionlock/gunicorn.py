"""Serve an app wrapped in the middleware from gunicorn, with every worker on one lock.

    gunicorn -w 4 'sessionlock.gunicorn:wrap("pkg.wsgi:app", backend="file:///srv/locks")'
    gunicorn -w 4 'sessionlock.gunicorn:wrap("proj.wsgi:application", key="cookie:sessionid")'
    gunicorn -w 4 -k uvicorn_worker.UvicornWorker 'sessionlock.gunicorn:wrap("pkg.asgi:app")'

(``uvicorn_worker`` is its own package: ``pip install uvicorn-worker``.) gunicorn's factory
syntax takes literals only, so the options are strings, numbers, lists and ``None`` (a key
spec such as ``"cookie:sessionid"``, a backend URL, ``exempt=["/static/"]``,
``cookie_session=None``): every option but a callable. The WSGI or ASGI middleware is
chosen from the worker class (``uvicorn``/``asgi`` workers get ASGI), or from the app when
gunicorn's configuration cannot be seen. An unknown option name stops the start with the
list of known ones.

The config-file form takes any option object (a key callable, rules) and wraps the app each
worker loaded, in ``gunicorn.conf.py``::

    from sessionlock.gunicorn import post_worker_init
    workers = 4
    wsgi_app = "pkg.wsgi:app"
    post_worker_init = post_worker_init(backend="file:///var/lib/app/locks", key="cookie:sessionid")

Misconfiguration stops the start: a backend whose lease is per process (``memory://``)
under more than one worker process would let two workers run one session's requests at
once, the very lost update the middleware exists to prevent, so :func:`wrap` and the hook
raise ConfigurationError (gunicorn then reports "Worker failed to boot" and exits) rather
than serve silently unserialized. Without a ``backend``, the default private directory
(``file://``) serializes all workers of the host.

Both forms also tell the WSGI middleware how many threads a worker has (sync: 1, gthread:
``--threads``), from which it derives ``max_waiting_threads`` (see
:mod:`sessionlock.fairness`): on sync workers a request whose session is busy in another
worker is answered 429 at once instead of blocking its whole worker process.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any

from .backends import DEFAULT_URL, Backend, from_url
from .errors import ConfigurationError
from .fairness import waiting_threads_for
from .options import check_names

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .core import Options

__all__ = ["load", "post_worker_init", "wrap", "wrap_app"]

logger = logging.getLogger("sessionlock")


def wrap(target: str, **options: Unpack[Options]) -> Any:
    """The app at ``target`` ("module:attribute"), wrapped for the gunicorn running it."""
    check_names(options, "sessionlock.gunicorn.wrap")
    config = _gunicorn_config()
    app = load(target)
    if config is None:
        return wrap_app(app, asgi=None, workers=None, **options)
    return wrap_app(
        app,
        asgi=_is_asgi_worker(config.worker_class_str),
        workers=config.workers,
        threads=worker_threads(config),
        **options,
    )


def post_worker_init(**options: Unpack[Options]) -> Any:
    """A gunicorn ``post_worker_init`` hook wrapping the app each worker loaded."""
    check_names(options, "sessionlock.gunicorn.post_worker_init")  # when the config loads

    def wrap_worker_app(worker: Any) -> None:
        config = worker.cfg
        asgi = _is_asgi_worker(config.worker_class_str)
        # gunicorn's own ASGI worker keeps the app in ``asgi``, every other in ``wsgi``.
        slot = "asgi" if hasattr(worker, "asgi") else "wsgi"
        app = getattr(worker, slot)
        threads = worker_threads(config)
        wrapped = wrap_app(app, asgi=asgi, workers=config.workers, threads=threads, **options)
        setattr(worker, slot, wrapped)

    return wrap_worker_app


def wrap_app(
    app: Any, *, asgi: bool | None, workers: int | None, threads: int | None = None, **options: Any
) -> Any:
    """``app`` in the right middleware, after checking the backend suits ``workers``.

    ``asgi=None`` decides from the app (a coroutine function is ASGI); ``workers=None``
    means unknown, and skips the check. ``threads``: a WSGI worker's thread count, from
    which ``max_waiting_threads`` is derived unless given (None: unknown, not capped).
    """
    check_names(options, "sessionlock.gunicorn.wrap_app")
    backend = options.pop("backend", DEFAULT_URL)
    url = backend if isinstance(backend, str) else None
    if isinstance(backend, str):
        backend = from_url(backend)
    check_workers(backend, workers, url)
    if asgi is None:
        asgi = is_asgi_app(app)
    if asgi:
        from .asgi import SessionLockMiddleware as ASGIMiddleware

        return ASGIMiddleware(app, backend=backend, **options)
    from .wsgi import SessionLockMiddleware as WSGIMiddleware

    if threads is not None and options.get("max_waiting_threads") is None:
        options["max_waiting_threads"] = waiting_threads_for(threads)

    return WSGIMiddleware(app, backend=backend, **options)


def check_workers(backend: Backend, workers: int | None, url: str | None = None) -> None:
    """Refuse a per-process backend under several worker processes (logged, then raised).

    ``url``: the backend's URL as given, to name it in the error.
    """
    if workers is None or workers <= 1 or backend.shared:
        return
    named = f"backend {url!r}" if url is not None else "the backend given"
    message = (
        f"{named} serializes a session within one process only, but"
        f" {workers} worker processes would run its requests at once: use"
        " backend='file:///dir' (every process of the host) or the default,"
        " backend='redis://host:6379/0' (every process of several hosts), or one worker"
    )
    logger.error(message)
    raise ConfigurationError(message)


def load(target: str) -> Any:
    """The object at ``"package.module:attribute"`` (dotted attributes allowed)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"app {target!r} is not 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    return obj


def is_asgi_app(app: Any) -> bool:
    """Whether ``app`` looks like an ASGI app: an ``async`` function or ``__call__``."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004  (we want the method, not callable())
    return inspect.iscoroutinefunction(call)


def worker_threads(config: Any) -> int | None:
    """Threads per worker process: 1 (sync), ``threads`` (gthread), None (greenlets, other).

    gunicorn runs a sync worker class with ``threads`` > 1 as gthread (its
    ``worker_class_str`` then says so).
    """
    name = str(config.worker_class_str).lower()
    if name == "sync" or name.endswith("syncworker"):
        return 1
    if name == "gthread" or name.endswith("threadworker"):
        return max(1, int(config.threads))
    return None


def _is_asgi_worker(worker_class: str) -> bool:
    name = worker_class.lower()
    return "uvicorn" in name or "asgi" in name


def _gunicorn_config() -> Any | None:
    """The configuration of the gunicorn calling this factory, from the calling frames.

    gunicorn hands a factory nothing but its literal arguments; the object that loads the
    app (its ``Application``, or the arbiter under ``--preload``) carries ``cfg``.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        config = getattr(owner, "cfg", None)
        if config is not None and type(config).__module__ == "gunicorn.config":
            return config
        frame = frame.f_back  # type: ignore[assignment]
    return None
