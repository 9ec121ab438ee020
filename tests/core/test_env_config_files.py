"""The Keras guard (core.env), dataclass configs (core.config) and atomic files (core.files)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Literal

import pytest

import json

import numpy as np

from core import config as dc
from core.files import save_npy_atomic, write_json_atomic


def _run_python(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_package_import_selects_tf_keras():
    result = _run_python("import recsys_ssl, tensorflow as tf; print(tf.keras.__name__)", {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


def test_keras3_loaded_first_fails_clearly():
    code = "import tensorflow as tf; tf.keras.layers; import text_ood"
    result = _run_python(code, {"TF_USE_LEGACY_KERAS": "0"})
    assert result.returncode != 0
    assert "Keras 2 (tf-keras)" in result.stderr


@dataclasses.dataclass(frozen=True)
class _Inner:
    weight: float = 0.1
    method: Literal["none", "rfm", "cfm"] = "none"
    sizes: tuple[int, ...] = (64, 32)
    path: str | None = None

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, received {self.weight}")


@dataclasses.dataclass(frozen=True)
class _Outer:
    epochs: int = 3
    verbose: bool = False
    inner: _Inner = _Inner()


def test_overrides_parse_by_type_and_validate():
    cfg = dc.apply_overrides(
        _Outer(), ["epochs=5", "verbose=true", "inner.weight=0.5", "inner.method=cfm", "inner.sizes=8,4", "inner.path=none"]
    )
    assert cfg == _Outer(epochs=5, verbose=True, inner=_Inner(weight=0.5, method="cfm", sizes=(8, 4), path=None))
    with pytest.raises(dc.ConfigError, match="unknown config key 'inner.wieght'"):
        dc.apply_overrides(_Outer(), ["inner.wieght=1"])
    with pytest.raises(dc.ConfigError, match="not one of"):
        dc.apply_overrides(_Outer(), ["inner.method=xfm"])
    with pytest.raises(dc.ConfigError, match="expected int"):
        dc.apply_overrides(_Outer(), ["epochs=many"])
    with pytest.raises(dc.ConfigError, match="weight must be >= 0"):
        dc.apply_overrides(_Outer(), ["inner.weight=-1"])


def test_dict_round_trip_rejects_unknown_keys():
    cfg = _Outer(inner=_Inner(sizes=(1, 2, 3)))
    assert dc.from_dict(_Outer, dc.to_dict(cfg)) == cfg
    with pytest.raises(dc.ConfigError, match="unknown config keys"):
        dc.from_dict(_Outer, {"inner": {"bogus": 1}})


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    path = str(tmp_path / "doc.json")
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.load(open(path)) == {"a": [1, 2], "b": 1}
    import core.files

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(core.files.json, "dump", crash)
    with pytest.raises(OSError):
        write_json_atomic(path, {"new": True})
    assert json.load(open(path)) == {"a": [1, 2], "b": 1}  # the old document, whole
    assert os.listdir(tmp_path) == ["doc.json"]  # no temporary left behind
    monkeypatch.undo()
    save_npy_atomic(str(tmp_path / "x.npy"), np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), [0, 1, 2])
    assert sorted(os.listdir(tmp_path)) == ["doc.json", "x.npy"]

