"""What the app tests share: the whole app under AppTest with a tiny configuration, page visits, and a
small zip of class folders to upload. (Each test module's ``app`` fixture is ``app_test()`` with the
``tinytl_home`` fixture: its own data folder and job queue; the app starts no workers in tests.)"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TINY = {"backbone": "mobilenetv2_050", "resolution": 32, "batch_size": 2, "pretrained": False}
"""Sidebar settings small enough for the suite."""


def app_test(timeout: float = 180, **settings) -> AppTest:
    """An AppTest of the whole app with :data:`TINY` (and ``settings`` over it) in the sidebar."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in {**TINY, **settings}.items():
        at.session_state[key] = value
    return at


def visit(at: AppTest, page: str) -> AppTest:
    """Switch to ``app_pages/<page>.py`` and run it; no exception."""
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def image_zip(classes: int) -> bytes:
    """A zip of ``classes`` class folders, three 8x8 PNGs each."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for c in range(classes):
            for i in range(3):
                image = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 50 * c + i, dtype=np.uint8)).save(image, format="PNG")
                zf.writestr(f"class{c}/{i}.png", image.getvalue())
    return buffer.getvalue()
