"""Command line: ``python -m recsys_ssl {train,evaluate,export} ...`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import recsys_ssl  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from recsys_ssl import config as config_lib
from serving import dataclass_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recsys_ssl",
                                     description="Two-tower retrieval with SSL regularisation (RFM / CFM).")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model into a workdir (resumes if it has checkpoints)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--features", required=True, help="feature-pipeline output directory")
    train.add_argument("--workdir", required=True)
    train.add_argument("--preset", default="movielens", choices=sorted(config_lib.PRESETS))
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. ssl.method=rfm (repeatable)")
    train.add_argument("--strategy", default="default", choices=["default", "mirrored", "multi_worker_mirrored"],
                       help="tf.distribute strategy (multi_worker_mirrored reads TF_CONFIG)")
    evaluate = commands.add_parser("evaluate", help="recall@K of the best model on the eval split -> eval.json")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="eval", choices=["eval", "validation"])
    export = commands.add_parser("export", help="versioned SavedModel: raw query features -> top-k items")
    export.add_argument("--workdir", required=True)
    export.add_argument("--export_dir", required=True)
    export.add_argument("--index", default="brute_force", choices=["brute_force", "scann"])
    export.add_argument("--k", type=int, default=100)
    return parser


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        if args.command == "train":
            from recsys_ssl.train import Trainer

            config = dataclass_config.apply_overrides(config_lib.preset(args.preset), args.overrides)
            summary = Trainer(args.features, args.workdir, config, make_strategy(args.strategy)).run()
            logging.info("training finished: %s", json.dumps({k: v for k, v in summary.items() if k != "history"}))
        elif args.command == "evaluate":
            from recsys_ssl.evaluate import evaluate

            result = evaluate(args.workdir, args.split)
            print(json.dumps(result["metrics"], indent=1))
        elif args.command == "export":
            from recsys_ssl.export import export

            path = export(args.workdir, args.export_dir, args.index, args.k)
            print(path)
    except (ValueError, FileNotFoundError) as error:
        logging.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
