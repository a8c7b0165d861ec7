"""The package stays mypy strict and ruff clean: checked with the tests, so CI enforces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["mypy"], id="mypy-strict"),
        pytest.param(["ruff", "check", "sessionlock", "tests", "benchmarks"], id="ruff-check"),
        pytest.param(["ruff", "format", "--check", "sessionlock"], id="ruff-format"),
    ],
)
def test_static_checks_pass(command: list[str]) -> None:
    tool = Path(sys.executable).parent / command[0]
    result = subprocess.run([str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
