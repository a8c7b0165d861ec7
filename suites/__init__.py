"""Proof against suites nobody here wrote: Flask's, Starlette's and Django's own tests, wrapped.

Run it (from the repository root, with the ``suites`` extra installed)::

    .venv/bin/pip install -e '.[suites]'
    .venv/bin/python -m suites                       # every suite, memory:// and file://
    .venv/bin/python -m suites --only flask --backend memory://
    .venv/bin/python -m suites --ref HEAD            # a commit's sessionlock, not the work tree
    tox -e suites

What it does: downloads the *published sdists* of Flask, Starlette and Django (the versions
pinned in :mod:`suites.specs`, which must equal the installed ones) with ``pip download
--no-binary :all: --no-deps`` into ``.suites-cache/`` (once), extracts them, and runs:

- Flask's ``tests/`` and its ``examples/tutorial`` (flaskr) tests;
- Starlette's ``tests/``, on asyncio and trio as upstream does, with upstream's blockbuster
  fixture (a blocking call on the event loop fails the test). Its suite imports the sdist's
  own ``starlette/`` (pytest puts the working directory first), the same version;
- Django's ``tests/runtests.py`` over the apps in :data:`suites.specs.DJANGO_LABELS`, twice
  wrapped: with the default key (``identity``: every request is serialized) and as
  "django-sessionid" with README's Django key ``cookie:sessionid``.

Each suite runs **plain** (upstream's way, plus :mod:`suites.compat` and the recorder, which
every run loads) and **wrapped** on ``memory://`` and on ``file://`` (a fresh
``file:///tmp/sessionlock-suite-...`` per run). Wrapped, every app the suite builds sits
behind sessionlock: Flask apps' ``wsgi_app`` (:mod:`suites.wrap_flask`), Starlette's middleware
stack (:mod:`suites.wrap_starlette`), both with ``cookie_session="session"``, and Django's
handlers with ``sessionlock.django.SessionLockMiddleware`` first in MIDDLEWARE
(:mod:`suites.wrap_django`). Every test has a time limit (``--timeout``, 30 s), so a request
stuck behind the lock is one failing test, not a stuck run.

What is reported, per suite and backend: passed/failed/errors/skipped plain and wrapped
(xfail and expected failures count as skipped); "via lock", the tests that sent at least one
request the lock admitted (a wrapped pass proves nothing if the lock never saw the request);
the seconds of the plain and the wrapped run; and the **new failures**: tests that pass plain
and fail, error or vanish wrapped. A new failure not listed in ``suites/known_differences.txt``
(each entry with the reason the difference is inherent) makes the run exit 1; listed entries
that no longer fail are printed. Logs and per-test outcomes (JSON) stay in
``.suites-cache/runs/``. About 3 minutes on 2 cores with the sdists cached, 4 without.
"""
