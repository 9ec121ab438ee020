"""Atomic versioned export directories (serving.export)."""

from __future__ import annotations

import os

import pytest

from serving.export import atomic_version_dir, list_versions, next_version


def test_atomic_version_dir(tmp_path):
    base = str(tmp_path / "export")
    assert next_version(base) == 1
    with atomic_version_dir(base) as target:
        open(os.path.join(target.tmp_path, "saved_model.pb"), "w").close()
        assert list_versions(base) == []  # nothing visible until the block completes
    assert target.version == 1 and os.path.isfile(os.path.join(base, "1", "saved_model.pb"))
    with pytest.raises(RuntimeError):
        with atomic_version_dir(base):
            raise RuntimeError("export failed half-way")
    assert list_versions(base) == [1] and os.listdir(base) == ["1"]
    with pytest.raises(FileExistsError):
        with atomic_version_dir(base, version=1):
            pass
