"""Command line: ``python -m recsys_ssl {train,evaluate,ablate,export} ...`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import recsys_ssl  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from recsys_ssl import ablation as ablation_lib
from recsys_ssl import config as config_lib
from recsys_ssl import tuning as tuning_lib
from core import config as dataclass_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recsys_ssl", allow_abbrev=False,
                                     description="Two-tower retrieval with SSL regularisation (RFM / CFM).")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model into a workdir (resumes if it has checkpoints)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    train.add_argument("--features", required=True, help="feature-pipeline output directory")
    train.add_argument("--workdir", required=True)
    train.add_argument("--preset", default="movielens", choices=sorted(config_lib.PRESETS))
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. ssl.method=rfm (repeatable)")
    train.add_argument("--strategy", default="default", choices=["default", "mirrored", "multi_worker_mirrored"],
                       help="tf.distribute strategy (multi_worker_mirrored reads TF_CONFIG)")
    evaluate = commands.add_parser("evaluate", help="recall@K of the best model on the eval split -> eval.json",
                                   allow_abbrev=False)
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="eval", choices=["eval", "validation"])
    evaluate.add_argument("--peers", default=None, metavar="DIR",
                          help="a `baselines` output directory: peers and paired differences in eval.json")
    ablate = commands.add_parser(
        "ablate", help="does SSL help on this data? methods x seeds x data fractions, alpha tuned on validation",
        description=ablation_lib.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ablate.add_argument("--features", required=True, help="feature-pipeline output directory")
    ablate.add_argument("--out", required=True, help="output directory (runs, ablation.json/.md/.png); resumable")
    ablate.add_argument("--methods", default="none,dropout,rfm,cfm",
                        help="comma-separated: none (required baseline), dropout (whole-feature dropout views), "
                             "rfm, cfm (default: %(default)s)")
    ablate.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                        help="an extra method, e.g. cfm_example=ssl.method=cfm,ssl.mask_granularity=example")
    ablate.add_argument("--versus", action="append", default=[], metavar="A:B",
                        help="also report method A minus method B (paired bootstrap), e.g. cfm:rfm (repeatable)")
    ablate.add_argument("--seeds", type=int, default=3, help="seeds per method (0..N-1) (default: %(default)s)")
    ablate.add_argument("--fractions", default="1", help="training-data fractions, e.g. 0.25,0.5,1 (default: 1)")
    ablate.add_argument("--alphas", default="0.03,0.1,0.3,1.0",
                        help="ssl.weight grid tuned on the validation split with seed 0 (default: %(default)s)")
    ablate.add_argument("--tune_metric", default="overall", choices=["overall", "tail"],
                        help="validation recall@100 slice that picks alpha (default: %(default)s)")
    ablate.add_argument("--refit", action="store_true",
                        help="eval runs train on train + validation for the epochs chosen on validation (seed 0), "
                             "as the peers are refit")
    ablate.add_argument("--peers", default=None, metavar="DIR",
                        help="baselines output directory (computed there unless done): peers in the report, "
                             "each method's paired difference to the best peer")
    ablate.add_argument("--preset", default="movielens", choices=sorted(config_lib.PRESETS))
    ablate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (repeatable)")
    tune = commands.add_parser(
        "tune", help="choose knobs on the validation split (coordinate search), optionally tune the peers alike",
        description=tuning_lib.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    tune.add_argument("--features", required=True, help="feature-pipeline output directory")
    tune.add_argument("--out", required=True, help="output directory (runs/, tune.json, tune.md); resumable")
    tune.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2[,...]",
                      help="a knob and its values, searched in the order given (repeatable)")
    tune.add_argument("--rounds", type=int, default=1, help="passes over the grids (default: %(default)s)")
    tune.add_argument("--peers", action="store_true",
                      help="also tune popularity / item-kNN / EASE on validation with the same number of runs")
    tune.add_argument("--preset", default="movielens", choices=sorted(config_lib.PRESETS))
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for every run (repeatable)")
    peers = commands.add_parser(
        "baselines", help="popularity, item-kNN and EASE under the same protocol (tuned on validation)",
        description=baselines_doc(), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    peers.add_argument("--features", required=True, help="feature-pipeline output directory")
    peers.add_argument("--output_dir", required=True, help="OUT/<peer>/eval.json, eval_hits.npz; baselines.json/.md")
    peers.add_argument("--peers", default="popularity,itemknn,ease", help="comma-separated (default: %(default)s)")
    peers.add_argument("--query_mode", default="user", choices=["user", "item"],
                       help="user: the user's items; item: the seed item (item-to-item) (default: %(default)s)")
    peers.add_argument("--ease_lambdas", default="10,30,100,300,1000,3000,10000",
                       help="EASE lambda grid, extended until the chosen value has a decade on either side "
                            "(default: %(default)s)")
    peers.add_argument("--knn_neighbours", default="10,20,50,100,200,500,1000",
                       help="item-kNN neighbourhood sizes (default: %(default)s)")
    peers.add_argument("--ease_max_items", type=int, default=20_000,
                       help="EASE refuses larger corpora (dense items x items float64) (default: %(default)s)")
    peers.add_argument("--no_refit", action="store_true",
                       help="fit the eval peers on train only (default: refit on train + validation)")
    export = commands.add_parser("export", help="versioned SavedModel: raw query features -> top-k items",
                                 allow_abbrev=False)
    export.add_argument("--workdir", required=True)
    export.add_argument("--export_dir", required=True)
    export.add_argument("--index", default="brute_force", choices=["brute_force", "scann"])
    export.add_argument("--k", type=int, default=100)
    return parser


def baselines_doc() -> str:
    import importlib.util

    spec = importlib.util.find_spec("recsys_ssl.baselines")  # its docstring, without importing TensorFlow
    with open(spec.origin) as f:
        source = f.read()
    return source.split('"""')[1]


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

            result = evaluate(args.workdir, args.split, peers=args.peers)
            print(json.dumps(result["metrics"], indent=1))
        elif args.command == "ablate":
            dataclass_config.apply_overrides(config_lib.preset(args.preset), args.overrides)  # fail early
            return ablation_lib.main_ablate(args)
        elif args.command == "tune":
            base = dataclass_config.apply_overrides(config_lib.preset(args.preset), args.overrides)  # fail early
            document = tuning_lib.tune(args.features, args.out, args.preset, args.overrides,
                                       tuning_lib.parse_grids(args.grid), args.rounds)
            if args.peers:
                tuning_lib.tune_peers(args.features, args.out, len(document["runs"]), base.model.query_mode)
            print(tuning_lib.markdown(document))
        elif args.command == "baselines":
            from recsys_ssl.baselines import markdown, run_baselines

            document = run_baselines(
                args.features, args.output_dir, [p.strip() for p in args.peers.split(",") if p.strip()],
                args.query_mode, [float(v) for v in args.ease_lambdas.split(",")],
                [int(v) for v in args.knn_neighbours.split(",")], args.ease_max_items,
                not args.no_refit)
            print(markdown(document))
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
