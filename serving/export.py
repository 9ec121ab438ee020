"""Export conventions shared by every exporter: versioned directories written atomically.

Layout (TF Serving's): ``EXPORT_DIR/<integer version>/`` holds one SavedModel. A version directory
only ever appears complete: the exporter writes into a hidden temporary directory beside it and
renames it into place, so a server polling ``EXPORT_DIR`` never sees a half-written model (it
also ignores every entry whose name is not an integer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator

TMP_PREFIX = ".tmp-export-"


def list_versions(export_dir: str) -> list[int]:
    """Returns the complete versions under ``export_dir``, ascending (empty if none or absent)."""
    if not os.path.isdir(export_dir):
        return []
    versions = []
    for name in os.listdir(export_dir):
        if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)):
            versions.append(int(name))
    return sorted(versions)


def next_version(export_dir: str) -> int:
    """Returns one more than the highest existing version, or 1."""
    versions = list_versions(export_dir)
    return versions[-1] + 1 if versions else 1


@dataclasses.dataclass
class ExportTarget:
    """Where an export is being written (``tmp_path``) and, once complete, where it landed (``path``)."""

    tmp_path: str
    path: str | None = None
    version: int | None = None


@contextlib.contextmanager
def atomic_version_dir(export_dir: str, version: int | None = None) -> Iterator[ExportTarget]:
    """Yields a temporary directory to write a model into; renames it to ``export_dir/<n>`` on success.

    Args:
      export_dir: the model's base path (created if missing).
      version: the version to create; default the next free one. If another exporter takes the
        same number first and ``version`` was not given, the next free number is used instead.

    Yields:
      An :class:`ExportTarget`: write the SavedModel and its assets into ``target.tmp_path``;
      after the ``with`` block, ``target.path`` and ``target.version`` name the final directory.
      If the block raises, the temporary directory is removed and nothing appears.

    Raises:
      FileExistsError: ``version`` was given explicitly and already exists.
    """
    os.makedirs(export_dir, exist_ok=True)
    target = ExportTarget(tmp_path=os.path.join(export_dir, f"{TMP_PREFIX}{uuid.uuid4().hex}"))
    os.makedirs(target.tmp_path)
    try:
        yield target
        while True:
            candidate = version if version is not None else next_version(export_dir)
            final_path = os.path.join(export_dir, str(candidate))
            if os.path.exists(final_path):
                if version is not None:
                    raise FileExistsError(f"version {version} already exists in {export_dir}")
                continue
            try:
                os.rename(target.tmp_path, final_path)
            except OSError:
                if version is not None or not os.path.exists(final_path):
                    raise
                continue  # Lost a race to another exporter: take the next number.
            target.path, target.version = final_path, candidate
            break
    finally:
        if os.path.isdir(target.tmp_path):
            shutil.rmtree(target.tmp_path, ignore_errors=True)


SERVING_LIMITS_FILE = os.path.join("assets.extra", "serving_limits.json")


def write_serving_limits(version_dir: str, max_string_bytes: int) -> str:
    """Records request limits the model needs in ``assets.extra/serving_limits.json``.

    The server (:mod:`serving.servable`) applies the smaller of this and ``--max_string_bytes`` to
    every ``DT_STRING`` element of a request (longer ones: INVALID_ARGUMENT / HTTP 400 before the
    model runs). TF Serving ignores ``assets.extra``.

    Args:
      version_dir: the (temporary) version directory being exported.
      max_string_bytes: the longest string element, in bytes, the model accepts (>= 1).

    Returns:
      The file written.
    """
    import json

    if max_string_bytes < 1:
        raise ValueError(f"max_string_bytes must be >= 1, received {max_string_bytes}")
    path = os.path.join(version_dir, SERVING_LIMITS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"max_string_bytes": int(max_string_bytes)}, f, indent=1)
    return path
