"""Settings for Django's ``tests/runtests.py``: upstream's test_sqlite, our runner, the lock.

Loaded with ``runtests.py --settings=suites.django_settings`` in every Django run, plain and
wrapped, so both record outcomes the same way. In a wrapped run (``SESSIONLOCK_SUITE_BACKEND``
set) it also installs :mod:`suites.wrap_django` and configures the lock. Being the settings
module, it is imported again in each spawned test worker, so the patch reaches them too.

The key is sessionlock's default (``identity``: every request is serialized) unless
``SESSIONLOCK_SUITE_KEY`` says otherwise (the "django-sessionid" suite: ``cookie:sessionid``,
the configuration README gives Django's database sessions).
"""

from __future__ import annotations

import os

# Upstream's settings: runtests.py runs from tests/, which is on sys.path.
from test_sqlite import *  # type: ignore[import-not-found]  # noqa: F403

from suites import env

TEST_RUNNER = "suites.django_runner.RecordingRunner"

if os.environ.get(env.BACKEND):
    from suites import stats, wrap_django

    SESSIONLOCK = env.middleware_options()
    stats.install()
    wrap_django.install()
