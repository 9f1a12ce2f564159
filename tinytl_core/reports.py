"""Tables built from library results, shared by the CLI, the app and the notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tinytl_core.modes import MODES, ModeResult
from tinytl_core.quantities import MB

FP32_BYTES = 4


def trainable_table(results: Sequence[ModeResult]) -> pd.DataFrame:
    """One row per mode: trainable parameters, their fp32 bytes, share of the model, applicability."""
    rows = []
    for r in results:
        rows.append(
            {
                "mode": r.mode,
                "title": MODES[r.mode].title if r.mode in MODES else r.mode,
                "applicable": r.applicable,
                "trainable_params": r.n_trainable if r.applicable else None,
                "trainable_MB": r.n_trainable * FP32_BYTES / MB if r.applicable else None,
                "trainable_%": 100 * r.trainable_fraction if r.applicable else None,
                "total_params": r.n_total if r.applicable else None,
                "lite_residual_blocks": len(r.lite_residual_blocks),
                "note": r.reason,
            }
        )
    return pd.DataFrame(rows)
