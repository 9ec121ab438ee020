"""Benchmark: wall time, peak memory and realised structure of ``pipelines.synthetic`` at scale.

Command (the numbers in BENCHMARKS.md):
  python -m benchmarks.synthetic_generation --num_users 200000 --num_items 200000 \
      --num_interactions 2000000

Generates into a temporary directory (deleted afterwards unless ``--output_dir``), times the
sampling phase alone and the whole of ``generate()`` (sampling again, statistics, writing), and
reports peak RSS, file sizes, the popularity statistics and the item-feature MI that
``generation.json`` records, as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from pipelines import synthetic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--num_users", type=int, default=200_000, help="users generated")
    parser.add_argument("--num_items", type=int, default=200_000, help="items generated")
    parser.add_argument("--num_interactions", type=int, default=2_000_000, help="interactions generated")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--output_dir", default=None, help="keep the output here (default: a temp dir, deleted)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="synthetic-bench-")
    config = synthetic.SyntheticConfig(output_dir=output_dir, num_users=args.num_users, num_items=args.num_items,
                                       num_interactions=args.num_interactions, seed=args.seed,
                                       overwrite=args.output_dir is not None)
    try:
        started = time.perf_counter()
        item_seed, interaction_seed = np.random.SeedSequence(config.seed).spawn(2)
        items = synthetic.sample_items(config, np.random.default_rng(item_seed))
        synthetic.sample_interactions(config, items, np.random.default_rng(interaction_seed))
        sampling_seconds = time.perf_counter() - started
        started = time.perf_counter()
        files = synthetic.generate(config)  # samples again, then writes
        total_seconds = time.perf_counter() - started
        sizes = {os.path.basename(p): os.path.getsize(p) for p in (files.items, *files.interactions)}
    finally:
        if args.output_dir is None:
            shutil.rmtree(output_dir, ignore_errors=True)
    report = {
        "config": {k: getattr(config, k) for k in ("num_users", "num_items", "num_interactions", "seed")},
        "sampling_seconds": round(sampling_seconds, 2),
        "generate_seconds_total": round(total_seconds, 2),
        "stats_and_writing_seconds": round(total_seconds - sampling_seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "file_bytes": sizes,
        "stats": files.stats,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
