"""A griffe extension for the API reference: Sphinx roles in docstrings (``:class:`X```) become code.

Our docstrings are plain prose with reStructuredText roles; mkdocstrings renders Markdown, where the
role would show as literal ``:class:`` text. ``~a.b.C`` shows as ``C``, as Sphinx would.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
