"""The request batcher, in-process with real SavedModels: merging, padding, isolation, limits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

import grpc
import numpy as np
import pytest

from serving.batcher import Batcher
from serving.batching_config import BatchingOptions, parse_batching_parameters
from serving.errors import ServingError
from serving.servable import load_servable


@pytest.fixture(scope="module")
def executor():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield pool


def _servable(model_root, model):
    return load_servable(model, 1, os.path.join(model_root, model, "1"), warm_up=False)


def _strings(values):
    array = np.empty(len(values), dtype=object)
    array[:] = [v.encode() for v in values]
    return array


async def _submit_all(batcher, requests):
    return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)


def test_concurrent_requests_merge_and_match_single_calls(model_root, executor):
    servable = _servable(model_root, "ood")
    batcher_options = BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=1)
    requests = [{"text": _strings([f"query number {i}"] * (1 + i % 3))} for i in range(10)]

    async def run():
        batcher = Batcher(servable, "serving_default", batcher_options, executor)
        return await _submit_all(batcher, requests)

    results = asyncio.run(run())
    for request, (outputs, timing) in zip(requests, results):
        expected = servable.run("serving_default", request)
        np.testing.assert_allclose(outputs["ood_score"], expected["ood_score"], rtol=1e-6)
        assert outputs["ood_score"].shape == (len(request["text"]),)
        assert timing.batch_rows <= 8 and timing.model_seconds > 0
    assert max(timing.batch_rows for _, timing in results) > 3  # Several requests shared a call.


@pytest.mark.parametrize("pad", [True, False])
def test_variable_length_histories_merge_only_with_padding(model_root, executor, pad):
    servable = _servable(model_root, "retrieval")
    histories = [["item1"], ["item2", "item3", "item4"], ["item5", "item6"]]
    requests = [{"user_id": _strings([f"u{i}"]), "history": _strings(h).reshape(1, -1)} for i, h in enumerate(histories)]
    options = BatchingOptions(batch_timeout_micros=50_000, num_batch_threads=1, pad_variable_length_inputs=pad)

    async def run():
        return await _submit_all(Batcher(servable, "serving_default", options, executor), requests)

    results = asyncio.run(run())
    for request, (outputs, timing) in zip(requests, results):
        expected = servable.run("serving_default", request)
        np.testing.assert_array_equal(outputs["item_ids"], expected["item_ids"])
        np.testing.assert_allclose(outputs["scores"], expected["scores"], rtol=1e-5, atol=1e-6)
        assert timing.batch_rows == (3 if pad else 1)


def test_a_bad_request_fails_alone(model_root, executor):
    servable = _servable(model_root, "tools")
    requests = [{"x": np.array(v, np.float32)} for v in ([4.0], [-1.0, 1.0], [9.0, 16.0])]
    options = BatchingOptions(batch_timeout_micros=50_000, num_batch_threads=1)

    async def run():
        return await _submit_all(Batcher(servable, "checked", options, executor), requests)

    good_a, bad, good_b = asyncio.run(run())
    assert isinstance(bad, ServingError) and bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x must be >= 0" in bad.message
    assert good_a[0]["sqrt"].tolist() == [2.0] and good_b[0]["sqrt"].tolist() == [3.0, 4.0]


def test_outputs_without_batch_dimension_are_run_per_request(model_root, executor):
    servable = _servable(model_root, "tools")
    requests = [{"x": np.array(v, np.float32)} for v in ([1.0, 2.0], [10.0], [100.0, 200.0, 300.0])]
    options = BatchingOptions(batch_timeout_micros=50_000, num_batch_threads=1)

    async def run():
        return await _submit_all(Batcher(servable, "total", options, executor), requests)

    totals = [outputs["total"].item() for outputs, _ in asyncio.run(run())]
    assert totals == [3.0, 10.0, 600.0]


def test_full_queue_is_rejected_with_unavailable(model_root, executor):
    servable = _servable(model_root, "tools")
    options = BatchingOptions(max_batch_size=1, max_enqueued_batches=2, num_batch_threads=1)

    async def run():
        batcher = Batcher(servable, "serving_default", options, executor)
        slow = batcher.submit({"micros": np.array([200_000], np.int64)})
        queued = batcher.submit({"micros": np.array([1], np.int64)})
        with pytest.raises(ServingError) as raised:
            batcher.submit({"micros": np.array([1], np.int64)})
        await asyncio.gather(slow, queued)
        return raised.value

    error = asyncio.run(run())
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.http_status == 503
    assert "queue" in error.message


def test_batching_disabled_runs_each_request_alone(model_root, executor):
    servable = _servable(model_root, "ood")
    options = BatchingOptions(enabled=False, batch_timeout_micros=50_000)
    requests = [{"text": _strings(["a", "b"])} for _ in range(4)]

    async def run():
        return await _submit_all(Batcher(servable, "serving_default", options, executor), requests)

    assert [timing.batch_rows for _, timing in asyncio.run(run())] == [1, 1, 1, 1]


def test_batching_parameters_file_format():
    options = parse_batching_parameters(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 500 }\n"
        "num_batch_threads { value: 1 }\npad_variable_length_inputs: true\n", BatchingOptions())
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads,
            options.pad_variable_length_inputs) == (64, 500, 1, True)
    with pytest.raises(ValueError, match="no field named"):
        parse_batching_parameters("max_batch_sise { value: 4 }", BatchingOptions())
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        parse_batching_parameters("max_batch_size { value: 0 }", BatchingOptions())
