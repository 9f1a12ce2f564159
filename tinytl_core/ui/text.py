"""Library docstrings as Markdown for the app, so the About page shows the rules the code applies."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:mod|func|class|data|meth|attr):`~?([^`]+)`")
_UNDERLINE = re.compile(r"^([=\-~^])\1{2,}\s*$")


def docstring_markdown(doc: str | None, heading: str = "#####") -> str:
    """Render a module docstring written in reST style as Markdown.

    Section titles underlined with ``---`` / ``===`` become ``heading`` lines (small, to sit inside an
    expander), Sphinx roles such as ``:func:`x``` become inline code and a closing ``::`` a colon (the
    indented block after it is a Markdown code block already). Everything else (``**bold**``, numbered
    lists, double-backtick code) is valid Markdown as it is.
    """
    lines = (doc or "").strip("\n").splitlines()
    out: list[str] = []
    for line in lines:
        if _UNDERLINE.match(line) and out and out[-1].strip():
            out[-1] = f"{heading} {out[-1].strip()}"
            continue
        line = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", line)
        out.append(line[:-1] if line.endswith("::") else line)  # reST "Usage::" introduces a code block
    return "\n".join(out)
