"""pytest plugin, in every run: lets a published suite import against today's pytest.

Flask 3.1's ``tests/test_cli.py`` imports ``_pytest.monkeypatch.notset``, renamed ``NOTSET``
in pytest 8.1; without the alias the whole module is a collection error, plain and wrapped
alike, and its tests would be lost to the comparison.
"""

from __future__ import annotations

from _pytest import compat, monkeypatch

if not hasattr(monkeypatch, "notset"):
    monkeypatch.notset = compat.NOTSET  # type: ignore[attr-defined]
