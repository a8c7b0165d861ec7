"""A griffe extension for the API reference: Sphinx roles in docstrings read as code.

The docstrings name objects the reST way (``:func:`release_session```); mkdocstrings renders
Markdown, where a role would show as raw text. Each ``:role:`target``` becomes
```target``` (a code span; the ``~`` prefix keeps the last name only). Loaded by mkdocs.yml.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`~?([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(1)
    if match.group(0).split("`", 1)[1].startswith("~"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
