"""The documentation site builds from docs/ with warnings as errors, API reference included.

``mkdocs build --strict``: a broken link or anchor, a page left out of the nav, a missing
include or a docstring mkdocstrings cannot read is a warning, and a warning fails the build.
Skipped only where MkDocs is not installed (``pip install -e '.[docs]'``; .ci/run installs it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="MkDocs is not installed: pip install -e '.[docs]'",
)


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict``, from another directory: the config's paths are its own."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=site.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner, not a warning
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_mkdocs
def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = build(ROOT / "mkdocs.yml", site)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    reference = (site / "reference" / "sessionlock.wsgi" / "index.html").read_text()
    assert "SessionLockMiddleware" in reference  # mkdocstrings rendered the module
    assert ":class:" not in reference  # Sphinx roles read as code (docs/griffe_roles.py)
    security = (site / "security" / "index.html").read_text()
    assert "What is protected" in security  # SECURITY.md, included


@needs_mkdocs
def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The control: the site's own settings turn a warning into a failed build."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\n"
        f"docs_dir: {docs}\n"
        "nav: [{Home: index.md}]\n"
        "plugins: [search]\n"
    )
    result = build(config, tmp_path / "site")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "missing.md" in result.stderr


def test_the_readme_links_resolve() -> None:
    """README.md's relative links (to docs/ pages, SECURITY.md) name files that exist."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert len(targets) >= 10, targets
    missing = [target for target in targets if not (ROOT / target).is_file()]
    assert not missing, missing
