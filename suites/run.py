"""One run of one suite, plain or wrapped, in its own process: command, environment, outcome."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import env
from .outcomes import RunRecord
from .specs import Suite

FRESH_FILE = "file://"  # asks for a fresh private file:///tmp/... directory per run


@dataclass(frozen=True)
class Settings:
    """What every run shares (from the command line)."""

    cache: Path
    test_timeout: float  # per test, seconds
    run_timeout: float  # per run, seconds: a run past it is killed and reported broken
    lock_timeout: float | None  # sessionlock's timeout in wrapped runs; None: its default
    sessionlock: Path | None = None  # a directory holding the sessionlock to test (--ref)


@dataclass(frozen=True)
class Job:
    suite: Suite
    backend: str | None  # None: plain

    @property
    def label(self) -> str:
        return f"{self.suite.name}-{_slug(self.backend) if self.backend else 'plain'}"


@dataclass
class RunResult:
    job: Job
    record: RunRecord
    seconds: float
    returncode: int
    log: Path
    broken: str = ""  # why the run gave no usable outcomes ("" when it did)


def execute(job: Job, tree: Path, settings: Settings) -> RunResult:
    """Run the job's suite from its extracted sdist ``tree``; never raises for test failures."""
    out = settings.cache / "runs"
    out.mkdir(parents=True, exist_ok=True)
    results, log = out / f"{job.label}.json", out / f"{job.label}.log"
    results.unlink(missing_ok=True)
    scratch = None
    environ = _environ(job, tree, settings, results)
    if job.backend == FRESH_FILE:
        scratch = tempfile.mkdtemp(prefix="sessionlock-suite-")  # mode 0700, as required
        environ[env.BACKEND] = f"file://{scratch}"
    started = time.monotonic()
    try:
        command, cwd = _command(job, settings), tree / job.suite.workdir
        returncode, broken = _run(command, cwd, environ, log, settings)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    record = RunRecord()
    if results.exists():
        record = RunRecord.read(results)
    elif not broken:
        broken = f"no outcomes written (exit {returncode}); see {log}"
    return RunResult(job, record, seconds, returncode, log, broken)


def _command(job: Job, settings: Settings) -> list[str]:
    suite = job.suite
    if suite.runner == "django":
        base = [sys.executable, "runtests.py", "--settings=suites.django_settings"]
        return [*base, "--parallel=1", "--noinput", *suite.args]
    command = [sys.executable, "-m", "pytest", *suite.args, "-q", "-p", "no:cacheprovider"]
    command += ["-p", "suites.compat", "-p", "suites.record"]
    command += ["--timeout", f"{settings.test_timeout:g}", "--continue-on-collection-errors"]
    if job.backend is not None and suite.wrapper:
        command += ["-p", suite.wrapper]
    return command


def _environ(job: Job, tree: Path, settings: Settings, results: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONLOCK_SUITE_")}
    # Only the suites package (not this repository's own tests/ package) joins the path,
    # through a directory holding a link to it.
    paths = [str(settings.cache / "pythonpath")]  # made by suites_link()
    if settings.sessionlock is not None:
        paths.insert(0, str(settings.sessionlock))
    paths += [str(tree / extra) for extra in job.suite.pythonpath]
    if environ.get("PYTHONPATH"):
        paths.append(environ["PYTHONPATH"])
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    environ["PYTHONDONTWRITEBYTECODE"] = "1"  # runs share the extracted trees
    environ[env.RESULTS] = str(results)
    environ[env.TEST_TIMEOUT] = f"{settings.test_timeout:g}"
    if job.backend is not None:
        environ[env.BACKEND] = job.backend
        if job.suite.key is not None:
            environ[env.KEY] = job.suite.key
        if settings.lock_timeout is not None:
            environ[env.LOCK_TIMEOUT] = f"{settings.lock_timeout:g}"
    return environ


def _run(
    command: list[str], cwd: Path, environ: dict[str, str], log: Path, settings: Settings
) -> tuple[int, str]:
    with log.open("w") as output:
        output.write(f"$ (cd {cwd} && {' '.join(command)})\n")
        output.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=settings.run_timeout), ""
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the run's own process group only
            process.wait()
            return -9, f"killed after {settings.run_timeout:g} s; see {log}"


def suites_link(cache: Path) -> Path:
    """A directory holding only a link to this package, for the runs' PYTHONPATH."""
    directory, target = cache / "pythonpath", Path(__file__).resolve().parent
    link = directory / "suites"
    if link.resolve() != target:
        directory.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return directory


def _slug(backend: str) -> str:
    return backend.split(":", 1)[0] if backend in (FRESH_FILE, "memory://") else "custom"
