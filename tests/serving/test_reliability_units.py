"""Issue 23 guards that need no server process: flag checks, a base-path move without a gap,
rate-limited logging, the descriptor budget and the decode lanes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time

import grpc
import pytest

from serving.__main__ import main
from serving.errors import ServingError, clip
from serving.log_limits import RateLimitedLog
from serving.manager import ModelManager
from serving.model_config import parse_model_config_text
from serving.servable import load_servable


@pytest.mark.parametrize("flag", ["--rest_body_read_timeout_seconds=inf", "--rest_header_read_timeout_seconds=inf",
                                  "--file_system_poll_wait_seconds=nan"])
def test_infinite_timeouts_are_refused(model_root, capsys, flag):
    code = main(["serve", "--model_name=ood", f"--model_base_path={os.path.join(model_root, 'ood')}", flag])
    assert code == 2
    assert "expected a finite number" in capsys.readouterr().err


def test_moving_a_model_to_a_new_base_path_never_answers_not_found(model_root, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(os.path.join(model_root, "ood", "1"), old / "1")
    shutil.copytree(os.path.join(model_root, "ood", "1"), new / "5")

    def slow_loader(name, version, path):
        time.sleep(1.0)  # A large model takes a while to load.
        return load_servable(name, version, path, warm_up=False)

    config = 'model_config_list {{ config {{ name: "m" base_path: "{}" }} }}'
    manager = ModelManager(parse_model_config_text(config.format(old)), poll_wait_seconds=0, loader=slow_loader,
                           settle_seconds=0)
    manager.start()
    assert manager.resolve("m").version == 1
    mover = threading.Thread(target=manager.reconfigure, args=(parse_model_config_text(config.format(new)),))
    mover.start()
    misses, versions = 0, set()
    while mover.is_alive():
        try:
            versions.add(manager.resolve("m").version)
        except ServingError as error:
            assert error.code == grpc.StatusCode.NOT_FOUND
            misses += 1
        time.sleep(0.01)
    mover.join()
    assert misses == 0 and versions == {1}
    assert manager.resolve("m").version == 5
    manager.stop()


def test_rate_limited_log_writes_once_per_interval_with_the_count(caplog):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("t"), interval_seconds=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="t")
    written = [log.log("accept", logging.ERROR, "cannot accept: %s", "EMFILE") for _ in range(1000)]
    now[0] = 10.5
    written.append(log.log("accept", logging.ERROR, "cannot accept: %s", "EMFILE"))
    assert sum(written) == 2 and written[0] and written[-1]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept: EMFILE", "cannot accept: EMFILE (+999 similar in the last 10 s)"]


@pytest.mark.parametrize("hard, expected", [(100_000, (1000, 1000)), (1024, (448, 448)), (300, (86, 86))])
def test_connection_caps_fit_the_descriptor_limit(monkeypatch, hard, expected):
    """Both caps plus the reserve for model files fit the open-file limit (raised when allowed)."""
    from serving import http_server

    limits = {"soft": 1024, "hard": hard}
    monkeypatch.setattr(http_server.resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))

    def setrlimit(_, values):
        assert values[0] <= limits["hard"]
        limits["soft"] = values[0]

    monkeypatch.setattr(http_server.resource, "setrlimit", setrlimit)
    rest, grpc_cap = http_server.fit_connection_caps(1000, 1000)
    assert (rest, grpc_cap) == expected
    assert rest + grpc_cap + http_server.FD_RESERVE <= limits["soft"]


def test_large_decode_lane_is_bounded():
    from serving.pools import DecodeLanes

    lanes = DecodeLanes(small_threads=1, max_large=1)

    async def scenario():
        release = asyncio.Event()

        async def hold():
            async with lanes.admit(True):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as raised:
            lanes.admit(True)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        async with lanes.admit(False) as lane:  # Ordinary requests are unaffected.
            assert await lane.run(sum, [1, 2]) == 3
        release.set()
        await holder
        async with lanes.admit(True):
            pass

    asyncio.run(scenario())
    lanes.shutdown()


def test_messages_quoting_input_are_clipped():
    error = ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad name " + "s" * 10_000)
    assert len(error.message) < 2100 and error.message.endswith("(8,009 more characters)")
    assert clip("short") == "short"


def test_grpc_channel_arguments_parse_like_tf_serving():
    from serving.server import parse_grpc_channel_arguments

    assert parse_grpc_channel_arguments("grpc.max_connection_idle_ms=5000, grpc.primary_user_agent=x") == (
        ("grpc.max_connection_idle_ms", 5000), ("grpc.primary_user_agent", "x"))
    assert parse_grpc_channel_arguments("") == ()
    for bad in ("max_connection_idle_ms=5", "grpc.max_connection_idle_ms"):
        with pytest.raises(ValueError, match="expected grpc.<name>=<value>"):
            parse_grpc_channel_arguments(bad)


@pytest.mark.parametrize("document", [
    {"instances": [{"a": [1, 2.5, None], "b": "x\u00e9\"\\n"}, {"a": [], "b": ""}], "signature_name": "s"},
    {"inputs": {"text": ["a", "b"], "n": [[1, 2], [3, 4]]}}, {"inputs": [1, 2, 3]}, {"instances": []}, {},
    {"inputs": {"nested": {"instances": [1]}}, "other": [1, {"x": [2]}]},
])
def test_large_json_equals_json_loads(document):
    from serving import large_json

    for text in (json.dumps(document), json.dumps(document, indent=3)):
        assert large_json.loads(text.encode()) == json.loads(text)
        assert large_json.loads(("\ufeff" + text).encode("utf-8")) == json.loads(("\ufeff" + text).encode("utf-8"))


@pytest.mark.parametrize("text, error", [
    (b'{"instances": [1, 2,]}', json.JSONDecodeError), (b'{"instances": [1] x', json.JSONDecodeError),
    (b'{"a" 1}', json.JSONDecodeError), (b"{'a': 1}", json.JSONDecodeError), (b'{"a": 1} 2', json.JSONDecodeError),
    (b'{"instances": [' + b"1" * 4301 + b"]}", ValueError),
    (b'{"instances": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", RecursionError),
])
def test_large_json_fails_like_json_loads(text, error):
    from serving import large_json

    with pytest.raises(error):
        json.loads(text)
    with pytest.raises(error):
        large_json.loads(text)


def test_large_json_stops_at_the_row_cap():
    from serving import large_json

    body = json.dumps({"instances": ["abc"] * 1_000_000}).encode()
    started = time.perf_counter()
    with pytest.raises(ServingError, match="more than 3200 rows"):
        large_json.loads(body, max_rows=3200)
    assert time.perf_counter() - started < 0.5  # json.loads alone takes ~0.1-1 s on this body.
    assert large_json.loads(json.dumps({"instances": [1] * 3200}).encode(), max_rows=3200)["instances"] == [1] * 3200
    assert len(large_json.loads(json.dumps({"inputs": {"x": [1] * 5000}}).encode(), max_rows=3200)["inputs"]["x"]) == 5000
