"""``python -m suites``: fetch, run plain and wrapped, compare; exit 1 on an unlisted difference."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import report, source
from .fetch import FetchError, check_installed, sdist
from .run import FRESH_FILE, Job, RunResult, Settings, execute, suites_link
from .specs import SUITES, Suite, by_name

ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m suites", description=__doc__)
    names = ", ".join(suite.name for suite in SUITES)
    parser.add_argument("--only", action="append", metavar="SUITE", help=f"one of {names}")
    parser.add_argument(
        "--backend",
        action="append",
        metavar="URL",
        help="memory:// or file:// (a fresh file:///tmp/... per run), repeatable; default: both",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per test, seconds")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="per run, seconds")
    parser.add_argument(
        "--lock-timeout", type=float, default=None, help="sessionlock timeout (default 25 s)"
    )
    parser.add_argument(
        "--ref", help="test this commit's sessionlock (git archive), not the installed one"
    )
    parser.add_argument("--cache", type=Path, default=ROOT / ".suites-cache")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    try:
        suites = by_name([n for value in args.only or () for n in value.split(",")])
        plains = [suite for suite in SUITES if suite.name in {s.plain for s in suites}]
        known = report.read_known()
        trees = {}
        for suite in (*plains, *suites):
            check_installed(suite)
            trees[suite.name] = sdist(suite.package, suite.version, args.cache)
        tested, under_test = None, source.describe_work_tree(ROOT)
        if args.ref:
            tested, commit = source.export(ROOT, args.ref, args.cache)
            under_test = f"commit {commit[:12]} ({args.ref})"
    except (ValueError, FetchError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"testing sessionlock from {under_test}")
    settings = Settings(args.cache, args.timeout, args.run_timeout, args.lock_timeout, tested)
    suites_link(args.cache)
    backends = args.backend or ["memory://", FRESH_FILE]
    jobs = [Job(suite, None) for suite in plains]
    jobs += [Job(suite, backend) for suite in suites for backend in backends]
    results = _run_all(jobs, trees, settings, args.jobs)
    return _report(suites, results, known, time.monotonic() - started)


def _run_all(
    jobs: list[Job], trees: dict[str, Path], settings: Settings, workers: int
) -> list[RunResult]:
    def one(job: Job) -> RunResult:
        result = execute(job, trees[job.suite.name], settings)
        counts = "BROKEN" if result.broken else str(result.record.counts())
        print(f"  {job.label}: {result.seconds:.0f} s {counts}", flush=True)
        return result

    # Longest first (Starlette's and Django's), so the workers finish together.
    order = sorted(jobs, key=lambda job: job.suite.package not in ("starlette", "django"))
    print(f"running {len(jobs)} runs, {workers} at a time ...", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, order))


def _report(
    suites: list[Suite], results: list[RunResult], known: dict[tuple[str, str], str], seconds: float
) -> int:
    plain = {r.job.suite.name: r for r in results if r.job.backend is None}
    wrapped = [r for s in suites for r in results if r.job.suite is s and r.job.backend]
    print()
    print(report.table(plain, wrapped))
    status = 0
    for run in (r for r in results if r.broken):
        print(f"\nBROKEN {run.job.label}: {run.broken}")
        status = 1
    still_failing: set[tuple[str, str]] = set()
    unlisted = 0
    for run in (r for r in wrapped if not r.broken):  # a broken run is reported above
        for failure in report.new_failures(plain[run.job.suite.plain].record, run):
            entry = (failure.suite, failure.test)
            listed = entry in known
            still_failing.add(entry)
            unlisted += not listed
            mark = "known" if listed else "NEW"
            print(f"{mark:5} [{failure.suite} {failure.backend}] {failure.test}")
            print(f"        {report.describe(failure)}")
    ran = {suite.name for suite in suites}
    for suite_name, test in sorted(set(known) - still_failing):
        if suite_name in ran:
            print(f"listed in known_differences.txt but no longer failing: {suite_name} {test}")
    if unlisted:
        print(f"\n{unlisted} new failure(s) not in suites/known_differences.txt")
        status = 1
    print(f"\ntotal {seconds:.0f} s; logs and outcomes in {results[0].log.parent}")
    return status


if __name__ == "__main__":
    sys.exit(main())
