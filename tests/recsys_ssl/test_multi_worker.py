"""The training step under MultiWorkerMirroredStrategy: two local worker processes (TF_CONFIG)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from core.net import free_port


def test_two_worker_training(features_dir, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workdir = str(tmp_path / "multi")
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "recsys_ssl", "train", "--features", features_dir, "--workdir", workdir,
             "--preset", "tiny", "--strategy", "multi_worker_mirrored", "--set", "train.epochs=1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    # One model in lockstep: each worker logs its epoch record; the losses are all-reduced over the
    # workers and validation runs on each worker's own copy of the weights, so identical records
    # (steps, mean losses, validation recall) mean both trained the same model step by step.
    records = []
    for output in outputs:
        lines = [line for line in output.splitlines() if "train epoch 1: {" in line]
        assert len(lines) == 1, output[-3000:]
        records.append(json.loads(lines[0].split("train epoch 1: ", 1)[1]))
    keys = ["steps", "global_step", "train_main", "train_ssl", "train_total", "validation_recall"]
    assert [records[0][k] for k in keys] == [records[1][k] for k in keys]
    assert records[0]["train_ssl"] > 0  # the tiny preset's CFM task ran
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))  # written by the chief only
    stats = json.load(open(os.path.join(os.path.dirname(features_dir), "features", "stats.json")))
    # The global batch is split over the two workers: one epoch = train examples // global batch steps.
    assert summary["global_steps"] == stats["splits"]["train"]["examples"] // 16
    assert summary["epochs_run"] == 1 and os.listdir(os.path.join(workdir, "best"))
