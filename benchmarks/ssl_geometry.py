"""Item-embedding geometry of trained retrieval runs: does SSL spread items of one group apart?

``python -m benchmarks.ssl_geometry --runs OUT/ablation/none/seed0 OUT/ablation/cfm/seed0 ... \
    [--group brand] [--sample 4000]``

For each run (a ``recsys_ssl train`` workdir) the best item tower embeds the whole corpus (no
masking), then, per slice (head / tail items of ``stats.json``), over ``--sample`` items:

- ``same_group_cos``: mean cosine of an item to the other corpus items of its ``--group`` value;
- ``random_cos``: mean cosine of an item to uniformly drawn corpus items;
- ``cohesion``: the difference of the two (how much tighter a group is than the corpus);
- ``nn10_same_group``: fraction of an item's 10 nearest corpus items that share its group value;
- ``uniformity``: Wang & Isola's ``log E exp(-2 |x - y|^2)`` over random pairs (lower = more spread).

and, for the tail examples of the eval split (same protocol as ``recsys_ssl evaluate``), where a
miss at ``K = 100`` comes from:

- ``hit@100``; ``group@100``: the target's group has an item in the top 100;
- ``lost_in_group``: the share of misses whose group *was* retrieved (outranked by its own group);
- ``same_group_above`` / ``other_group_above``: median number of items ranked above the target
  that share / do not share its group.

Runs are reported as given; pass several seeds to see the spread. Prints a markdown table and writes
it to ``--output_dir`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


import recsys_ssl  # noqa: E402,F401  (Keras 2 before TensorFlow)
import numpy as np  # noqa: E402

from recsys_ssl.data import FIRST_ID  # noqa: E402
from recsys_ssl.evaluate import held_out_examples  # noqa: E402
from recsys_ssl.geometry import METRICS, MISS_METRICS, group_geometry, tail_misses  # noqa: E402
from recsys_ssl.metrics import corpus_embeddings, query_embeddings  # noqa: E402
from recsys_ssl.workdir import restore_best  # noqa: E402


def run_geometry(workdir: str, group: str, sample: int, seed: int) -> dict[str, dict[str, float]]:
    """Per-slice geometry (``head`` / ``tail``) of one training workdir's best item tower, and
    ``tail_misses`` of its eval split."""
    model, feature_set, _ = restore_best(workdir)
    if group not in feature_set.item_feature_ids or feature_set.item_feature_ids[group].ndim != 1:
        raise ValueError(f"--group {group!r} must be a single-valued item feature of {feature_set.features_dir}")
    embeddings = corpus_embeddings(model, feature_set.num_items)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    groups = feature_set.item_feature_ids[group].astype(np.int64)
    sizes = np.bincount(groups)
    eligible = (groups >= FIRST_ID) & (sizes[groups] > 1)  # padding / OOV are no group
    result = {}
    for name, mask in (("head", feature_set.is_head), ("tail", ~feature_set.is_head)):
        candidates = np.flatnonzero(mask & eligible)
        rng = np.random.default_rng(seed)
        rows = rng.choice(candidates, size=min(sample, len(candidates)), replace=False)
        result[name] = group_geometry(embeddings, groups, rows, rng) | {"items": int(len(rows))}
    held_out, targets, exclude = held_out_examples(model, feature_set, "eval")
    tail = np.flatnonzero(~feature_set.is_head[targets])
    queries = query_embeddings(model, {key: values[tail] for key, values in held_out.items()})
    result["tail_misses"] = tail_misses(queries, embeddings, groups, targets[tail], [exclude[i] for i in tail])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--runs", nargs="+", required=True, help="recsys_ssl train workdirs")
    parser.add_argument("--group", default="brand", help="single-valued item feature that defines a group")
    parser.add_argument("--sample", type=int, default=4000, help="items measured per slice")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled items")
    parser.add_argument("--output_dir", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    results = {run: run_geometry(run, args.group, args.sample, args.seed) for run in args.runs}
    print(f"| run | slice | items | {' | '.join(METRICS)} |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for run, slices in results.items():
        for name in ("head", "tail"):
            cells = " | ".join(f"{slices[name][m]:.4f}" for m in METRICS)
            print(f"| {os.path.relpath(run)} | {name} | {slices[name]['items']} | {cells} |")
    print(f"\nTail eval examples, group = {args.group}:\n")
    print(f"| run | {' | '.join(MISS_METRICS)} |")
    print("|---|" + "---|" * len(MISS_METRICS))
    for run, slices in results.items():
        cells = " | ".join(f"{slices['tail_misses'][m]:.4g}" for m in MISS_METRICS)
        print(f"| {os.path.relpath(run)} | {cells} |")
    if args.output_dir:
        with open(args.output_dir, "w") as f:
            json.dump({"group": args.group, "sample": args.sample, "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
