"""The training step under MultiWorkerMirroredStrategy: two local worker processes (TF_CONFIG)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_training(features_dir, tmp_path):
    ports = [_free_port(), _free_port()]
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
    assert all("epoch 0:" in output for output in outputs)  # both workers ran the epoch in lockstep
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))  # written by the chief only
    stats = json.load(open(os.path.join(os.path.dirname(features_dir), "features", "stats.json")))
    # The global batch is split over the two workers: one epoch = train examples // global batch steps.
    assert summary["global_steps"] == stats["splits"]["train"]["examples"] // 16
    assert summary["epochs_run"] == 1 and os.listdir(os.path.join(workdir, "best"))
