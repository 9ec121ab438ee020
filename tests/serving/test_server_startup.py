"""Start-up checks of ``python -m serving`` (in-process ``main``), and the timeout message."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import time

import numpy as np
import pytest

from serving.__main__ import main
from serving.batching_config import BatchingOptions
from serving.errors import ServingError
from serving.predictor import Predictor
from serving.servable import load_servable
from serving.stats import RequestStats
from core.net import free_port


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("which", ["port", "rest_api_port"])
def test_a_busy_port_fails_before_any_model_loads(model_root, busy_port, caplog, which):
    other = "rest_api_port" if which == "port" else "port"
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    code = main(["serve", "--model_name=ood", f"--model_base_path={os.path.join(model_root, 'ood')}",
                 f"--{which}={busy_port}", f"--{other}={free_port()}"])
    assert code == 1
    assert time.monotonic() - started < 5
    assert f"{busy_port}" in caplog.text and "in use" in caplog.text
    assert "loaded model" not in caplog.text


def test_binding_all_interfaces_warns_that_the_apis_are_unauthenticated(model_root, busy_port, caplog):
    code = main(["serve", "--host=0.0.0.0", "--model_name=ood", f"--model_base_path={os.path.join(model_root, 'ood')}",
                 f"--port={busy_port}", f"--rest_api_port={free_port()}"])
    assert code == 1  # The busy port stops it before it serves anything.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unauthenticated" in w and "0.0.0.0" in w for w in warnings), warnings




def test_a_sub_millisecond_deadline_is_not_reported_as_0ms(model_root):
    servable = load_servable("tools", 1, os.path.join(model_root, "tools", "1"), warm_up=False)

    async def run():
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            predictor = Predictor(BatchingOptions(), executor, RequestStats(), timeout_seconds=0.0004)
            with pytest.raises(ServingError) as raised:
                await predictor.predict(servable, "serving_default", {"micros": np.array([200_000], np.int64)})
            return raised.value

    error = asyncio.run(run())
    assert "within the request timeout of 0.4 ms" in error.message, error.message
