"""One small app per framework, on its own session layer, for the framework matrix.

    MATRIX_MODE=locked gunicorn -k gthread --threads 24 'tests.e2e.matrix.wsgi_apps:flask_app()'
    MATRIX_MODE=bare uvicorn --factory tests.e2e.matrix.asgi_apps:starlette_app

Every app answers the same routes with the same session logic (:mod:`.logic`), so
tests/e2e/test_matrix.py runs one set of scenarios against each: ``locked`` is the app as the
README sets it up (the lock outside the session layer, the rules inside it), ``bare`` the
same app with neither: the control. Each module imports its framework inside the factory,
so the package imports with only one framework installed (a tox environment of tox.ini).
"""
