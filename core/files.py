"""Atomic file writes: a reader (or a resumed run) sees the whole new file or the old one, never half.

Each writer writes a temporary file in the target's directory and renames it over the target
(``os.replace``, atomic on POSIX file systems).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np


def _temporary(path: str, suffix: str = "") -> str:
    return f"{path}.{uuid.uuid4().hex}.tmp{suffix}"


def write_json_atomic(path: str, document: Any, indent: int | None = 1, sort_keys: bool = True) -> None:
    """Writes ``document`` as JSON to ``path`` atomically."""
    tmp = _temporary(path)
    try:
        with open(tmp, "w") as f:
            json.dump(document, f, indent=indent, sort_keys=sort_keys)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """Writes ``array`` in ``.npy`` format to ``path`` atomically."""
    tmp = _temporary(path, ".npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
