"""Parsing large predict bodies without holding the GIL for seconds, and stopping at the row cap.

``json.loads`` is one C call: on a 15.7 MiB body it holds the GIL for its whole duration (0.2 s on
an idle machine, over 1 s under load), so even with the parse in a thread of its own every other
request (and the event loop) stalls behind it. :func:`loads` parses the envelope and the
top-level arrays element by element (each element with the C decoder), so the interpreter can
switch threads between elements, and it stops as soon as ``instances`` (or a bare columnar
``inputs`` list) holds more than ``max_rows`` elements: a body that could never run costs only
the parse of its first ``max_rows + 1`` rows.

The result equals ``json.loads(body)`` for every valid body; invalid bodies raise the same
exception types (``json.JSONDecodeError``, ``ValueError`` for over-long integers,
``RecursionError``), plus ``ServingError`` INVALID_ARGUMENT for too many rows.
"""

from __future__ import annotations

import json
import re
from typing import Any

from serving.errors import too_many_rows

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def loads(body: bytes, max_rows: int | None = None) -> Any:
    """``json.loads(body)``, element by element for the top-level containers (module docstring).

    Args:
      body: the request body (UTF-8, or UTF-16/32 as ``json.loads`` detects it).
      max_rows: the most rows a request may have (``None``: no limit).
    """
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    index = _skip(text, 0)
    if text.startswith("{", index):
        value, index = _object(text, index, max_rows)
    else:
        value, index = _DECODER.raw_decode(text, index)
    index = _skip(text, index)
    if index != len(text):
        raise json.JSONDecodeError("Extra data", text, index)
    return value


def _skip(text: str, index: int) -> int:
    return _WS.match(text, index).end()


def _after_item(text: str, index: int, close: str) -> tuple[int, bool]:
    """Past the ``,`` after a container item (``(index, False)``) or its closing ``close``
    (``(index, True)``)."""
    index = _skip(text, index)
    if text.startswith(close, index):
        return index + 1, True
    if not text.startswith(",", index):
        raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
    return _skip(text, index + 1), False


def _object(text: str, index: int, max_rows: int | None, columns: bool = False) -> tuple[dict, int]:
    """The top-level object (``instances`` and ``inputs`` element by element), or with ``columns``
    the named ``inputs`` object (every list value element by element)."""
    out: dict = {}
    index = _skip(text, index + 1)
    if text.startswith("}", index):
        return out, index + 1
    while True:
        if not text.startswith('"', index):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
        key, index = _DECODER.raw_decode(text, index)
        index = _skip(text, index)
        if not text.startswith(":", index):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
        index = _skip(text, index + 1)
        if columns and text.startswith("[", index):
            out[key], index = _array(text, index, None)  # One named column: rows checked later.
        elif not columns and key in ("instances", "inputs") and text.startswith("[", index):
            out[key], index = _array(text, index, max_rows)
        elif not columns and key == "inputs" and text.startswith("{", index):
            out[key], index = _object(text, index, None, columns=True)
        else:
            out[key], index = _DECODER.raw_decode(text, index)
        index, closed = _after_item(text, index, "}")
        if closed:
            return out, index


def _array(text: str, index: int, max_rows: int | None) -> tuple[list, int]:
    out: list = []
    index = _skip(text, index + 1)
    if text.startswith("]", index):
        return out, index + 1
    while True:
        value, index = _DECODER.raw_decode(text, index)
        out.append(value)
        if max_rows is not None and len(out) > max_rows:
            raise too_many_rows(f"more than {max_rows}", max_rows)
        index, closed = _after_item(text, index, "]")
        if closed:
            return out, index
