"""The SSL ablations of BENCHMARKS.md: ``python -m recsys_ssl ablate`` with each data set's settings.

The ablation itself (alpha tuned on validation with seed 0, every method x seed on the eval split,
paired per-user bootstrap against no SSL, resumable) is the user-facing command
(``recsys_ssl/ablation.py``); this script only fixes, per data set, the feature directory, the
preset and the overrides that BENCHMARKS.md's tables were produced with. Extra arguments go to
``ablate`` unchanged (e.g. ``--seeds 1``, ``--fractions 0.25,0.5,1``, ``--variant ...``).

  python benchmarks/ssl_ablation.py long_tail --out runs/lt/ablation
  python benchmarks/ssl_ablation.py movielens --out runs/ml/ablation --features runs/ml/features
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys_ssl.__main__ import main as recsys_main  # noqa: E402

DATASETS = {
    # regime long_tail_features (pipelines/synthetic_long_tail.py), 100k items, 1.2M interactions
    "long_tail": {"features": "runs/lt/features", "preset": "synthetic",
                  "set": ["train.epochs=3", "ssl.temperature=0.2"]},
    # the earlier synthetic set (groups regime, brand-level preferences), 100k items, 1M interactions
    "synthetic_brand": {"features": "runs/synth_brand/features", "preset": "synthetic",
                        "set": ["train.epochs=3", "ssl.temperature=0.2"]},
    # ml-latest-small, --split user_time
    "movielens": {"features": "runs/ml/features", "preset": "movielens", "set": []},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--features", default=None, help="default: the data set's usual feature directory")
    args, rest = parser.parse_known_args(argv)
    settings = DATASETS[args.dataset]
    command = ["ablate", "--features", args.features or settings["features"], "--out", args.out,
               "--preset", settings["preset"], "--methods", "none,cfm,rfm,dropout", "--alphas", "0.03,0.1,0.3",
               *[x for s in settings["set"] for x in ("--set", s)], *rest]
    return recsys_main(command)


if __name__ == "__main__":
    sys.exit(main())
