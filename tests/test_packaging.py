"""The package as users get it: built with the oldest setuptools it declares, its metadata,
and extras that match what the code imports.

``test_builds_with_the_oldest_declared_setuptools`` (marker ``packaging``; needs PyPI, about
10 s) builds the sdist, then the wheel from it, in isolated environments pinned to the
minimum in ``[build-system] requires``, and reads what it made. Deselect it offline with
``-m "not packaging"``.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: Extras for working on sessionlock, never needed by a user's import.
DEV_EXTRAS = {"test", "suites", "docs"}


def _declared_setuptools() -> str:
    """The minimum version in ``[build-system] requires`` (``setuptools>=X``)."""
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        if requirement.name == "setuptools":
            (spec,) = requirement.specifier
            assert spec.operator == ">=", f"declare a minimum, got {text!r}"
            return spec.version
    raise AssertionError("no setuptools in [build-system] requires")


@pytest.mark.packaging
def test_builds_with_the_oldest_declared_setuptools(tmp_path: Path) -> None:
    minimum = _declared_setuptools()
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("SECURITY.md", "mkdocs.yml"):
        shutil.copy(ROOT / name, source / name)
    for tree in ("sessionlock", "docs"):
        shutil.copytree(ROOT / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__"))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"setuptools=={minimum}\n")
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        env={**os.environ, "PIP_CONSTRAINT": str(constraints)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # Both isolated environments (sdist, then the wheel from it) had exactly the minimum.
    log = built.stdout + built.stderr  # build reports its steps on stderr
    used = re.findall(r"^\s*- setuptools==(\S+)$", log, re.MULTILINE)
    assert used == [minimum, minimum], log[-3000:]

    version = PROJECT["version"]
    with zipfile.ZipFile(out / f"sessionlock-{version}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        info = f"sessionlock-{version}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        assert wheel.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert "sessionlock/py.typed" in names
    assert "sessionlock = sessionlock.__main__:main" in entry_points
    with tarfile.open(out / f"sessionlock-{version}.tar.gz") as sdist:
        member = sdist.extractfile(f"sessionlock-{version}/LICENSE")
        assert member is not None
        assert member.read() == (ROOT / "LICENSE").read_bytes()
        in_sdist = set(sdist.getnames())
    for name in ("CHANGELOG.md", "SECURITY.md", "mkdocs.yml", "docs/index.md"):  # MANIFEST.in
        assert f"sessionlock-{version}/{name}" in in_sdist, name

    assert metadata["License-Expression"] == PROJECT["license"] == "MIT"
    assert metadata.get_all("License-File") == PROJECT["license-files"] == ["LICENSE"]
    urls = dict(line.split(", ", 1) for line in metadata.get_all("Project-URL"))
    assert urls == PROJECT["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    classifiers = metadata.get_all("Classifier")
    assert classifiers == PROJECT["classifiers"]
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Operating System :: MacOS" in classifiers
    assert metadata.get_all("Provides-Extra") == list(PROJECT["optional-dependencies"])
    wanted = {str(Requirement(text)) for text in PROJECT["dependencies"]}
    for extra, texts in PROJECT["optional-dependencies"].items():
        wanted |= {f'{Requirement(text)}; extra == "{extra}"' for text in texts}
    assert set(metadata.get_all("Requires-Dist")) == wanted


# -- extras against imports ----------------------------------------------------------------

#: Framework adapters import the framework they adapt (and what it brings or hands them):
#: whoever imports ``sessionlock.flask`` has Flask. Not an extra: the user's own dependency.
ADAPTERS = {
    "sessionlock.flask": {"flask", "markupsafe"},
    "sessionlock.django": {"django", "asgiref"},
    "sessionlock.django_checks": {"django"},
    "sessionlock.templatetags.sessionlock": {"django"},
    # jinja2 and markupsafe: for the Jinja2Templates environment the app passes in.
    "sessionlock.starlette": {"starlette", "jinja2", "markupsafe"},
    # sessionlock check reads Django's settings only for an app that is a Django handler.
    "sessionlock.cli_check": {"django"},
}
#: Typing-only names (under ``if TYPE_CHECKING``): never imported at run time.
TYPING_ONLY = {"_typeshed", "typing_extensions"}


def _imports(tree: ast.Module) -> list[tuple[str, bool, bool]]:
    """(top-level module, lazy, guarded) of every run-time import: lazy inside a function,
    guarded inside a ``try`` (whose handler turns ImportError into advice)."""
    found: list[tuple[str, bool, bool]] = []

    def visit(node: ast.AST, lazy: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], lazy, guarded) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], lazy, guarded))
            visit(
                child,
                lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)),
                guarded or isinstance(child, ast.Try),
            )

    visit(tree, False, False)
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _distributions_of(module: str) -> set[str]:
    """The installed distributions (canonical names) that provide top-level ``module``."""
    return {canonicalize_name(d) for d in importlib.metadata.packages_distributions()[module]}


def test_every_third_party_import_is_a_dependency_an_extra_or_the_adapted_framework() -> None:
    dependencies = {canonicalize_name(Requirement(t).name) for t in PROJECT["dependencies"]}
    extras = {
        canonicalize_name(Requirement(text).name): extra
        for extra, texts in PROJECT["optional-dependencies"].items()
        if extra not in DEV_EXTRAS
        for text in texts
    }
    problems = []
    seen = set()
    for path in sorted((ROOT / "sessionlock").rglob("*.py")):
        source = path.read_text()
        module = _module_name(path)
        for name, lazy, guarded in _imports(ast.parse(source)):
            if name in sys.stdlib_module_names or name in {"sessionlock", "__future__"}:
                continue
            seen.add(name)
            if name in TYPING_ONLY:
                problems.append(f"{module}: {name} imported at run time (typing only)")
                continue
            provided = _distributions_of(name)
            if provided & dependencies:
                continue
            if name in ADAPTERS.get(module, ()):
                continue
            in_extras = sorted({extras[d] for d in provided if d in extras})
            if not in_extras:
                problems.append(f"{module}: {name} is neither a dependency nor in an extra")
                continue
            advice = [f"pip install 'sessionlock[{extra}]'" for extra in in_extras]
            if not (lazy or guarded):
                problems.append(f"{module}: {name} (extra {in_extras}) imported eagerly")
            if not any(text in source for text in advice):
                problems.append(f"{module}: no {advice[0]!r} advice for {name}")
    assert problems == []
    # The check saw the imports it is about (it would pass vacuously on a broken parse).
    assert {"cryptography", "redis", "waitress", "flask", "django", "starlette"} <= seen


BLOCKED = ["redis", "waitress", "flask", "django", "starlette", "jinja2", "markupsafe"]


def test_the_core_imports_with_the_dependencies_only() -> None:
    # Every optional package blocked: what does not need one imports, what needs one says
    # which extra to install.
    script = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
import sessionlock, sessionlock.wsgi, sessionlock.asgi, sessionlock.core
import sessionlock.gunicorn, sessionlock.uvicorn, sessionlock.rules, sessionlock.stale
from sessionlock import ConfigurationError, from_url
assert from_url("memory://") is not None
try:
    from_url("redis://localhost:6379/0")
except ConfigurationError as error:
    print(error)
from sessionlock.demo import run_demo
try:
    run_demo(clients=1, requests=1, work=0.0)
except ImportError as error:
    print(error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert "pip install 'sessionlock[redis]'" in lines[0]
    assert "pip install 'sessionlock[demo]'" in lines[1]
