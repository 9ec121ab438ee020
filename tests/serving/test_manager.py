"""Version discovery, policies, labels, failed loads and config parsing (real SavedModels, no server)."""

from __future__ import annotations

import os
import shutil
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2

from serving import __main__ as cli
from serving.errors import ServingError
from serving.manager import ModelManager
from serving.model_config import (
    ModelConfigError,
    aspired_versions,
    parse_model_config_text,
    single_model_config,
)

State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture
def base_path(model_root, tmp_path):
    """A base path with versions 1, 2, 3 (copies of the OoD stand-in)."""
    base = tmp_path / "model"
    for version in (1, 2, 3):
        shutil.copytree(os.path.join(model_root, "ood", "1"), base / str(version))
    return str(base)


def _config(base_path: str, policy: str = "", labels: str = ""):
    text = f'model_config_list {{ config {{ name: "m" base_path: "{base_path}" {policy} {labels} }} }}'
    return parse_model_config_text(text)


def _loaded(manager: ModelManager) -> list[int]:
    return [s.version for s in manager.statuses("m") if s.state == State.AVAILABLE]


@pytest.mark.parametrize("policy, expected", [
    ("", [3]),
    ("model_version_policy { latest { num_versions: 2 } }", [2, 3]),
    ("model_version_policy { all {} }", [1, 2, 3]),
    ("model_version_policy { specific { versions: 1 versions: 3 versions: 9 } }", [1, 3]),
])
def test_version_policies(base_path, policy, expected):
    assert aspired_versions(_config(base_path, policy)[0], [3, 1, 2]) == expected
    manager = ModelManager(_config(base_path, policy), poll_wait_seconds=0, settle_seconds=0)
    manager.start()
    assert _loaded(manager) == expected
    assert manager.resolve("m").version == expected[-1]
    manager.stop()


def test_labels_and_not_found_errors(base_path):
    labels = 'version_labels { key: "stable" value: 2 } version_labels { key: "next" value: 5 }'
    manager = ModelManager(_config(base_path, "model_version_policy { all {} }", labels),
                           poll_wait_seconds=0, settle_seconds=0)
    manager.start()
    assert manager.resolve("m", label="stable").version == 2
    for kwargs, text in (({"label": "nope"}, "label"), ({"label": "next"}, "Specific(m, 5)"),
                         ({"version": 7}, "Specific(m, 7)")):
        with pytest.raises(ServingError, match=r"label|Specific") as raised:
            manager.resolve("m", **kwargs)
        assert raised.value.code == grpc.StatusCode.NOT_FOUND and text in raised.value.message
    with pytest.raises(ServingError) as raised:
        manager.resolve("other")
    assert raised.value.http_status == 404 and "Latest(other)" in raised.value.message
    manager.stop()


def test_new_versions_swap_in_and_removed_ones_unload(base_path):
    manager = ModelManager(_config(base_path), poll_wait_seconds=0, settle_seconds=0)
    manager.start()
    held = manager.resolve("m")  # A request in flight holds version 3.
    shutil.copytree(os.path.join(base_path, "3"), os.path.join(base_path, "4"))
    manager.poll_once()
    assert manager.resolve("m").version == 4
    assert {s.version: s.state for s in manager.statuses("m")}[3] == State.END
    assert held.run("serving_default", {"text": _text("still works")})["ood_score"].shape == (1,)
    shutil.rmtree(os.path.join(base_path, "4"))
    manager.poll_once()  # Latest on disk is 3 again: it is reloaded, 4 unloaded.
    assert manager.resolve("m").version == 3 and _loaded(manager) == [3]
    manager.stop()


def test_a_broken_version_keeps_the_old_one_serving_then_is_given_up(base_path):
    manager = ModelManager(_config(base_path), poll_wait_seconds=0, max_load_attempts=2, settle_seconds=0)
    manager.start()
    broken = os.path.join(base_path, "5")
    os.makedirs(broken)
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"\x00not a saved model")
    for attempt in (1, 2):
        manager.poll_once()
        status = {s.version: s for s in manager.statuses("m")}[5]
        assert status.load_attempts == attempt and status.error_code == grpc.StatusCode.UNKNOWN
        assert "cannot parse the SavedModel" in status.error_message
        assert manager.resolve("m").version == 3  # Still served while 5 is retried.
    manager.poll_once()
    assert {s.version: s.load_attempts for s in manager.statuses("m")}[5] == 2  # Given up.
    assert _loaded(manager) == [3]
    manager.stop()


def test_directories_still_being_written_are_not_loaded(base_path):
    manager = ModelManager(_config(base_path), poll_wait_seconds=0, settle_seconds=0.5)
    manager.start()
    assert _loaded(manager) == [3]
    partial = os.path.join(base_path, "6")
    os.makedirs(os.path.join(partial, "variables"))  # No saved_model.pb yet.
    os.makedirs(os.path.join(base_path, ".tmp-export-abc"))
    shutil.copy(os.path.join(base_path, "3", "saved_model.pb"), os.path.join(base_path, ".tmp-export-abc"))
    manager.poll_once()
    assert 6 not in [s.version for s in manager.statuses("m")]
    shutil.rmtree(partial)
    shutil.copytree(os.path.join(base_path, "3"), partial)  # Complete now, but modified just now.
    manager.poll_once()
    assert manager.resolve("m").version == 3
    time.sleep(0.6)
    manager.poll_once()
    assert manager.resolve("m").version == 6
    manager.stop()


def test_reconfigure_adds_and_removes_models(base_path, model_root):
    manager = ModelManager(_config(base_path), poll_wait_seconds=0, settle_seconds=0)
    manager.start()
    other = single_model_config("other", os.path.join(model_root, "ood"))
    manager.reconfigure([other])
    assert manager.model_names() == ["other"] and manager.resolve("other").version == 1
    with pytest.raises(ServingError):
        manager.resolve("m")
    manager.stop()


def test_missing_base_path_serves_nothing_yet(tmp_path):
    manager = ModelManager([single_model_config("m", str(tmp_path / "absent"))], poll_wait_seconds=0)
    manager.start()
    with pytest.raises(ServingError, match="no version"):
        manager.resolve("m")
    manager.stop()


@pytest.mark.parametrize("text, expected", [
    ("model_config_list { config { name: 'a' base_path: '/x' } ", "not a text-format ModelServerConfig"),
    ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }", "duplicate"),
    ("model_config_list { config { name: 'a' } }", "base_path is required"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }", "model_platform"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific {} } } }", "specific"),
    ("model_config_list { config { name: 'a' base_path: '/x' version_labels { key: 'l' value: 0 } } }", "label"),
    ("custom_model_config { }", "custom_model_config"),
    ("", "no config entries"),
])
def test_bad_model_configs_are_rejected(text, expected):
    with pytest.raises(ModelConfigError, match=expected):
        parse_model_config_text(text)


def test_project_models_config_parses():
    path = os.path.join(os.path.dirname(cli.__file__), "config", "models.config")
    configs = {c.name: c for c in parse_model_config_text(open(path).read(), path)}
    assert sorted(configs) == ["ood", "retrieval", "retrieval_scann"]


def test_cli_bad_model_arguments_are_usage_errors(capsys, tmp_path):
    assert cli.main(["serve"]) == 2  # Neither a base path nor a config file.
    bad_config = tmp_path / "bad.config"
    bad_config.write_text("model_config_list { config { name: 'a' } }")
    assert cli.main(["serve", f"--model_config_file={bad_config}"]) == 2
    assert cli.main(["serve", "--model_base_path=/x", "--port=0", "--rest_api_port=0"]) == 2
    assert cli.main(["--model_base_path=/x"]) == 2  # the command word comes first


def _text(value: str):
    import numpy as np

    array = np.empty(1, dtype=object)
    array[0] = value.encode()
    return array
