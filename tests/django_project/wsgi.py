"""WSGI and ASGI entry points of the test project (gunicorn / uvicorn)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
asgi_application = get_asgi_application()
