"""The Adapt page's sparse-update scheme: the backbone's default, or a JSON scheme uploaded or pasted.

A scheme from the browser is untrusted text: it is parsed as JSON data only (never executed), its size is
capped, and it is checked against the backbone (layer names, ratios, blocks) before a run can start;
every problem is one message saying what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from torch import nn

from tinytl_core.modes import prepare_model
from tinytl_core.sparse_scheme import SchemeError, SparseScheme, default_scheme

__all__ = ["SchemeCheck", "SchemeSource", "check_scheme_text", "default_scheme_check"]


class SchemeSource:
    """Where the Adapt page takes the scheme from (radio options)."""

    DEFAULT = "Default for this backbone"
    UPLOAD = "Upload a JSON file"
    PASTE = "Paste JSON"
    ALL = (DEFAULT, UPLOAD, PASTE)


@dataclass(frozen=True)
class SchemeCheck:
    """A scheme read and checked against a backbone: ``scheme`` (None when invalid), ``error`` (what to
    fix) and ``description`` (one line: what trains)."""

    scheme: SparseScheme | None
    error: str = ""
    description: str = ""

    @property
    def ok(self) -> bool:
        return self.scheme is not None and not self.error


@lru_cache(maxsize=8)
def _meta_model(backbone: str) -> nn.Module:
    # The classifier-only mode leaves every layer as timm built it: layer names are the backbone's own.
    return prepare_model(backbone, "last", device="meta", engine=False).model


def default_scheme_check(backbone: str) -> SchemeCheck:
    """The default scheme of ``backbone`` (what mode ``sparse`` trains without a scheme of its own)."""
    model = _meta_model(backbone)
    try:
        scheme = default_scheme(model)
    except SchemeError as exc:
        return SchemeCheck(None, str(exc))
    return SchemeCheck(scheme, "", scheme.describe(model))


@lru_cache(maxsize=32)
def check_scheme_text(text: str | bytes, backbone: str) -> SchemeCheck:
    """Parse a JSON scheme (an upload's bytes or pasted text) and check it against ``backbone``."""
    if not (text.strip() if isinstance(text, str) else text.strip()):
        return SchemeCheck(None, 'the scheme is empty: give JSON such as {"bias_blocks": 4, "weights": {}}')
    try:
        scheme = SparseScheme.from_json(text)
        model = _meta_model(backbone)
        scheme.check(model)
    except SchemeError as exc:
        return SchemeCheck(None, f"Invalid scheme: {exc}")
    return SchemeCheck(scheme, "", scheme.describe(model))
