"""Which sessionlock the suites test: the installed one (the work tree), or a committed ref.

The repository is edited by several people at once; ``--ref HEAD`` tests exactly a commit,
exported with ``git archive`` into the cache and put first on the runs' PYTHONPATH (ahead of
the editable install, whose finder comes after the path).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True).stdout


def export(root: Path, ref: str, cache: Path) -> tuple[Path, str]:
    """(directory holding the ref's ``sessionlock/``, its commit id)."""
    commit = _git(root, "rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()
    target = cache / f"sessionlock-{commit[:12]}"
    done = target / ".exported"
    if not done.exists():
        archive = _git(root, "archive", "--format=tar", commit, "sessionlock")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
        done.touch()
    return target, commit


def describe_work_tree(root: Path) -> str:
    """The installed sessionlock: the work tree's commit and whether sessionlock/ is edited."""
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD").decode().strip()
        edited = _git(root, "status", "--porcelain", "--", "sessionlock").decode().splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "the installed sessionlock (not a git checkout)"
    if edited:
        return f"the work tree at {commit} with {len(edited)} uncommitted file(s) in sessionlock/"
    return f"the work tree at {commit} (clean)"
