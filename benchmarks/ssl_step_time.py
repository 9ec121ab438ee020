"""Training step time of the SSL variants against the no-SSL baseline, interleaved in one process.

``python -m benchmarks.ssl_step_time --features F [--preset movielens] [--set k=v ...]``

Builds one model per variant (same config except the SSL / negative-sampling settings), warms each
step function up, then times rounds of ``--steps`` steps per variant in turn, so that a load change
on a shared machine hits every variant alike. Reports the median step time per variant and its ratio to
``none``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


import recsys_ssl  # noqa: E402,F401  (Keras 2 before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from recsys_ssl import config as config_lib  # noqa: E402
from recsys_ssl.data import FeatureSet  # noqa: E402
from recsys_ssl.train import make_train_step  # noqa: E402
from recsys_ssl.workdir import build_model  # noqa: E402
from core import config as dataclass_config  # noqa: E402

VARIANTS = {"none": ["ssl.method=none"], "rfm": ["ssl.method=rfm"], "cfm": ["ssl.method=cfm"],
            "dropout": ["ssl.method=feature_dropout"],
            "cfm_example": ["ssl.method=cfm", "ssl.mask_granularity=example"],
            "cfm_example_head": ["ssl.method=cfm", "ssl.mask_granularity=example", "ssl.projection_head=128"],
            # mixed negative sampling (issue 21): B' uniform corpus negatives per batch, in-batch + uniform
            "mns256": ["ssl.method=none", "train.mns_negatives=256"],
            "mns1024": ["ssl.method=none", "train.mns_negatives=1024"],
            "cfm_mns256": ["ssl.method=cfm", "train.mns_negatives=256"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--features", required=True, help="feature-pipeline output directory")
    parser.add_argument("--preset", default="movielens", help="recsys_ssl config preset of every variant")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds over the variants (median over rounds)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, 'none' first")
    args = parser.parse_args(argv)
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    if "none" not in variants:
        parser.error("--variants needs 'none' (the ratios are to it)")
    strategy = tf.distribute.get_strategy()
    # In-batch negatives only unless a variant adds MNS (the movielens preset trains with MNS 256).
    base = dataclass_config.apply_overrides(config_lib.preset(args.preset), ["train.mns_negatives=0", *args.set])
    feature_set = FeatureSet.load(args.features, base.model.max_values, base.model.min_count)
    batches = list(feature_set.examples("train").map(lambda x: {k: x[k] for k in ("user_id", "history", "item_id")})
                   .batch(base.train.batch_size, drop_remainder=True).take(args.steps))
    steps = {}
    for name, overrides in variants.items():
        config = dataclass_config.apply_overrides(base, overrides)
        model = build_model(feature_set, config)
        step = make_train_step(strategy, model, tf.keras.optimizers.Adam(config.train.learning_rate))
        for i, batch in enumerate(batches[:3]):  # trace and warm up
            step(batch, tf.constant([0, i], tf.int32))
        steps[name] = step
    times = {name: [] for name in steps}
    for round_index in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for i, batch in enumerate(batches):
                out = step(batch, tf.constant([round_index, i], tf.int32))
            float(out["total"])  # wait for the last step
            times[name].append((time.perf_counter() - started) / len(batches))
    result = {"features": args.features, "preset": args.preset, "overrides": args.set,
              "batch_size": base.train.batch_size, "ssl_batch_size": base.ssl.batch_size,
              "median_step_ms": {n: 1000 * float(np.median(t)) for n, t in times.items()},
              "load_average": os.getloadavg()}
    result["ratio_to_none"] = {n: result["median_step_ms"][n] / result["median_step_ms"]["none"] for n in times}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
