"""Library docstrings and tables as Markdown, so the About page shows the rules the code applies; messages
as sentences (:func:`sentences`)."""

from __future__ import annotations

import re

from tinytl_core.layer_kinds import ACTIVATIONS, KIND_NEEDS, MASKED, Needs


def sentences(*parts: str) -> str:
    """``parts`` as one text of sentences: each stripped, its first letter capitalised and ending in a full
    stop unless it ends in one already (or in ``!``/``?``); empty parts are dropped. For messages built from
    an exception's text and a note of our own, which ran together ("... '0.5 GB' The Home ...")."""
    out = []
    for part in parts:
        text = part.strip()
        if not text:
            continue
        text = text[0].upper() + text[1:]
        out.append(text if text[-1] in ".!?" else text + ".")
    return " ".join(out)


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


_NEEDS_TEXT = {Needs.MASK: "1-bit mask", Needs.NOTHING: "nothing"}


def layer_kinds_markdown() -> str:
    """The layer-kinds table (:mod:`tinytl_core.layer_kinds`) as Markdown: each kind and what its backward
    needs, then each activation, its kind, what its gradient needs and whether the engine runs it itself."""
    lines = ["| kind | backward needs |", "|---|---|"]
    lines += [f"| {kind.value} | {needs} |" for kind, needs in KIND_NEEDS.items()]
    lines += ["", "| activation | classes | kind | gradient needs | training engine |"]
    lines += ["|---|---|---|---|---|"]
    for entry in ACTIVATIONS.values():
        classes = ", ".join(c.__name__ for c in entry.classes) or "by name: " + ", ".join(sorted(entry.names))
        needs = _NEEDS_TEXT.get(entry.needs, f"its {entry.needs.value}")
        engine = "1-bit mask" if entry.name in MASKED else "stock"
        engine += " (fused after a frozen norm)" if entry.forward and entry.name != "identity" else ""
        engine += (
            "; `mobiletl`: 1-bit sign mask, gradient `g * (x > 0)` (approximate)" if entry.sign_mask else ""
        )
        lines.append(f"| {entry.name} | {classes} | {entry.kind.value} | {needs} | {engine} |")
    return "\n".join(lines)
