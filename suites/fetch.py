"""Published sdists, downloaded once into the cache and extracted beside their archive."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from .specs import Suite


class FetchError(RuntimeError):
    """The sdist could not be had, or is not the version installed."""


def check_installed(suite: Suite) -> None:
    """Refuse a suite whose framework is installed at another version than its sdist."""
    try:
        installed = metadata.version(suite.package)
    except metadata.PackageNotFoundError:
        raise FetchError(f"{suite.package} is not installed: pip install -e '.[suites]'") from None
    if installed != suite.version:
        raise FetchError(
            f"{suite.package} {installed} is installed but suites/specs.py pins {suite.version}: "
            "the published suite must test the installed code; change the pin or the venv"
        )


def sdist(package: str, version: str, cache: Path) -> Path:
    """The extracted source tree of ``package==version``, downloading it if needed."""
    tree = cache / f"{package}-{version}"
    done = tree / ".extracted"
    if done.exists():
        return tree
    archive = _archive(package, version, cache) or _download(package, version, cache)
    with tarfile.open(archive) as tar:
        # The archive's single top directory is "<name>-<version>": extract it into the cache.
        tar.extractall(cache, filter="data")
    if not tree.is_dir():
        raise FetchError(f"{archive.name} did not hold {tree.name}/")
    done.touch()
    return tree


def _archive(package: str, version: str, cache: Path) -> Path | None:
    wanted = f"{package}-{version}.tar.gz".lower()
    found = [p for p in cache.glob("*.tar.gz") if p.name.lower() == wanted]
    return found[0] if found else None


def _download(package: str, version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--quiet",
        f"{package}=={version}",
        "-d",
        str(cache),
    ]
    print(f"downloading {package}=={version} (sdist) ...", flush=True)
    completed = subprocess.run(command, check=False)
    archive = _archive(package, version, cache)
    if completed.returncode != 0 or archive is None:
        raise FetchError(f"pip download {package}=={version} failed ({completed.returncode})")
    return archive
