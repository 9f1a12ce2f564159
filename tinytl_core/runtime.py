"""Process-wide settings for the app's server, the CLI and the planner's worker processes.

:func:`freeze_imported_objects` moves every object alive now (after the imports: PyTorch, timm, pandas
make about 500k objects the cycle collector tracks) out of the collector's reach. Python runs a full
collection each time enough new objects survive, and each one scanned all of them again. Measured with
``gc.callbacks``: the Memory Explorer's first look at all 8 modes of mobilenetv2_100 spent 0.22 s of its
~1.2 s in the collector, 0.04 s with the imports frozen. The objects frozen are module-level state that
lives as long as the process anyway; objects made later are collected as usual.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_imported_objects() -> bool:
    """``gc.freeze()`` once per process, after its imports; True if this call froze, False if an earlier
    one did (later calls would also freeze garbage-to-be, e.g. a page's data, for good)."""
    global _frozen
    with _lock:
        if _frozen:
            return False
        gc.collect()  # what is garbage already is freed, not frozen
        gc.freeze()
        _frozen = True
        return True
