"""``python -m sessionlock demo``: the bare app loses updates, the wrapped one loses none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sessionlock.__main__ import main
from sessionlock.demo import Outcome, format_table, run_demo

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_loses_updates_without_the_middleware_and_none_with_it() -> None:
    started: list[str] = []
    without, with_lock = run_demo(clients=4, requests=10, on_start=started.append)
    assert (without.label, with_lock.label) == ("without sessionlock", "with sessionlock")
    assert without.sent == with_lock.sent == 40
    assert without.lost > 0
    assert with_lock.lost == 0
    assert with_lock.final == 40
    assert len(started) == 2
    assert all(url.startswith("http://127.0.0.1:") for url in started)


def test_the_table_shows_sent_final_and_lost() -> None:
    table = format_table([Outcome("without sessionlock", 40, 9), Outcome("with", 40, 40)])
    header, bare, locked = table.splitlines()
    assert header.split() == ["requests", "sent", "final", "count", "updates", "lost"]
    assert bare.split() == ["without", "sessionlock", "40", "9", "31"]
    assert locked.split() == ["with", "40", "40", "0"]


def test_the_command_prints_the_table_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sessionlock", "demo", "--clients", "3", "--requests", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = {line.split("  ")[0]: line.split()[-3:] for line in result.stdout.splitlines()}
    assert rows["with sessionlock"] == ["15", "15", "0"]
    assert rows["without sessionlock"][0] == "15"


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_without_waitress_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "waitress.server", None)  # makes its import fail
    assert main(["demo"]) == 1
    assert "pip install 'sessionlock[demo]'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--clients=0", "--requests=-1", "--work-ms=x"])
def test_bad_options_are_refused(option: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", option])
    assert exit_info.value.code == 2
