"""Proof against suites nobody here wrote: Flask's, Starlette's and Django's own tests, wrapped.

Run it (from the repository root, with the ``suites`` extra installed)::

    .venv/bin/pip install -e '.[suites]'
    .venv/bin/python -m suites                      # every suite, memory:// and file://
    .venv/bin/python -m suites --only flask --backend memory://
    tox -e suites

What it does: downloads the *published sdists* of Flask, Starlette and Django (the versions
pinned in :mod:`suites.specs`, which must equal the installed ones) with ``pip download
--no-binary :all: --no-deps`` into ``.suites-cache/``, extracts them, and runs each suite's
own tests against the installed framework three times:

- **plain**: as upstream runs them (plus :mod:`suites.compat` and the recorder, in every run);
- **wrapped, memory://** and **wrapped, file://** (a fresh ``file:///tmp/...`` per run): every
  app the suite builds sits behind sessionlock: Flask apps' ``wsgi_app``
  (:mod:`suites.wrap_flask`), Starlette's middleware stack (:mod:`suites.wrap_starlette`),
  and Django's handlers, with ``sessionlock.django.SessionLockMiddleware`` first in MIDDLEWARE
  (:mod:`suites.wrap_django`).

What is measured, per suite and backend: passed/failed/errors/skipped plain and wrapped
(xfail and expected failures count as skipped), how many tests sent at least one request
through the lock ("exercised": a wrapped pass proves nothing if the lock never saw the
request), the seconds each run took, and the **new failures**: tests that pass plain and fail
(or error, or vanish) wrapped. A new failure not listed in ``suites/known_differences.txt``
(each entry with the reason the difference is inherent) makes the run exit 1; listed entries
that no longer fail are printed so the list stays honest. Per-run logs and per-test outcomes
are left in ``.suites-cache/runs/``.
"""
