"""``ModelServer`` inside a test's own event loop: config-file polling and graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp

from serving.batching_config import BatchingOptions
from serving.model_config import load_model_config_file
from serving.server import ModelServer, ServerOptions
from core.net import free_port


def _write_config(path: str, models: dict[str, str]) -> None:
    entries = "".join(f'config {{ name: "{n}" base_path: "{p}" }} ' for n, p in models.items())
    with open(path + ".tmp", "w") as f:
        f.write(f"model_config_list {{ {entries} }}")
    os.replace(path + ".tmp", path)
    later = time.time() + 1  # Make sure the modification time changes even within one second.
    os.utime(path, (later, later))


async def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_config_file_changes_are_applied_and_broken_ones_ignored(model_root, tmp_path):
    config_path = str(tmp_path / "models.config")
    ood = os.path.join(model_root, "ood")
    _write_config(config_path, {"a": ood})
    rest_port = free_port()
    options = ServerOptions(port=0, rest_api_port=rest_port, file_system_poll_wait_seconds=0.2,
                            model_config_file_poll_wait_seconds=0.2, version_settle_seconds=0,
                            batching=BatchingOptions(num_batch_threads=1))

    async def scenario():
        server = ModelServer(load_model_config_file(config_path), options, config_path)
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{rest_port}/v1/models/a:predict"
                async with session.post(url, data=json.dumps({"instances": ["hello"]})) as response:
                    assert response.status == 200
            _write_config(config_path, {"a": ood, "b": ood})
            await _wait_for(lambda: server.manager.model_names() == ["a", "b"])
            await _wait_for(lambda: any(s.state == 30 for s in server.manager.statuses("b")))
            with open(config_path, "w") as f:
                f.write("model_config_list { config { name: ")  # Broken: ignored, models kept.
            os.utime(config_path, (time.time() + 2, time.time() + 2))
            await asyncio.sleep(0.6)
            assert server.manager.model_names() == ["a", "b"]
            _write_config(config_path, {"b": ood})
            await _wait_for(lambda: server.manager.model_names() == ["b"])
        finally:
            await server.stop()

    asyncio.run(scenario())
