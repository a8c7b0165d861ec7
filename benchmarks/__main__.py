"""Every benchmark's headline figures in one table: measured, anchor, target, met?

    .venv/bin/python -m benchmarks            # about 5 minutes on a 2-core machine
    .venv/bin/python -m benchmarks --quick    # about 1.5 minutes: checks that all of it works
    .venv/bin/python -m benchmarks --only load fifo

Each benchmark module runs in a subprocess of its own (a fresh interpreter: no thread, event
loop, backend or heap left over from the one before), which calls the module's
``figures(quick)`` and hands the figures back as JSON. The anchor of a figure (the physical
limit or the peer it is compared with: a raw ``flock``, a bare app, the same app on one
worker) is measured in the same run, next to it. A module that cannot run here (``wrk`` not
installed, a module missing) gives ``n/a`` rows; one that fails gives a row saying so, and
its error goes to stderr. Progress and the modules' own output go to stderr; the table to
stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ._figures import HEADERS, Figure, dump, load, row
from ._table import print_table

ROOT = Path(__file__).resolve().parent.parent

# (short name, module, what it measures); in this order, the long server runs first.
MODULES: list[tuple[str, str, str]] = [
    ("load", "bench_load", "wrk on uvicorn and gunicorn: tracking cost, hello overhead"),
    ("fifo", "bench_fifo", "one session over 2 workers vs 1"),
    ("file", "bench_file", "cross-process hand-off vs raw flock and filelock"),
    ("redis", "bench_redis", "redis:// hand-off vs raw BLPOP, redis-py Lock; round trips"),
    ("uncontended", "bench_uncontended", "µs per uncontended request, in process"),
    ("wake", "bench_wake", "in-process wake vs the raw primitive"),
    ("queue", "bench_queue", "N queued requests on one key: efficiency"),
    ("churn", "bench_churn", "distinct keys: nothing left behind"),
    ("stale", "bench_stale", "stale_pages: the revision's cost per request"),
    ("shared", "bench_shared", "8 parallel GETs of one session: shared vs bare; hand-offs"),
]

# -- in the child: one module's figures -------------------------------------------------------


def child(name: str, quick: bool, out: Path) -> None:
    module_name = dict((short, module) for short, module, _ in MODULES)[name]
    module = importlib.import_module(f"benchmarks.{module_name}")
    dump(module.figures(quick), out)


# -- in the parent: run them all, one table ---------------------------------------------------


def run(name: str, quick: bool) -> tuple[list[Figure], float]:
    """One module's figures (from its subprocess) and the seconds it took."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as scratch:
        out = Path(scratch) / "figures.json"
        command = [sys.executable, "-m", "benchmarks", "--child", name, "--json", str(out)]
        command += ["--quick"] if quick else []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr, timeout=900
            )
            failed = f"exit {done.returncode}" if done.returncode else ""
        except subprocess.TimeoutExpired:
            failed = "timed out after 900 s"
        elapsed = time.monotonic() - started
        if failed or not out.exists():
            why = f"failed ({failed or 'no figures'}; see stderr)"
            return [Figure(f"{name}: all figures", "n/a", why, "", None)], elapsed
        return load(out), elapsed


def main(argv: Sequence[str] | None = None) -> None:
    names = [short for short, _, _ in MODULES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="short runs: checks that it works")
    parser.add_argument("--only", nargs="+", choices=names, help="these benchmarks only")
    parser.add_argument("--child", choices=names, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.json)
        return

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    rows: list[list[str]] = []
    for index, (short, module, what) in enumerate(MODULES):
        if args.only and short not in args.only:
            continue
        print(f"[{index + 1}/{len(MODULES)}] {short} ({module}): {what}", file=sys.stderr)
        figures, elapsed = run(short, args.quick)
        print(f"[{index + 1}/{len(MODULES)}] {short}: {elapsed:.0f} s", file=sys.stderr)
        rows += [[short, *row(figure)] for figure in figures]
    total = time.monotonic() - started
    mode = " --quick (short runs that check the instrument: not figures to quote)"
    print(
        f"python -m benchmarks{mode if args.quick else ''}: {os.cpu_count()} cores, load"
        f" average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {total:.0f} s"
    )
    print_table(["bench", *HEADERS], rows)


if __name__ == "__main__":
    main()
