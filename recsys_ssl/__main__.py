"""``python -m recsys_ssl <command>``: two-tower retrieval with SSL regularisation (RFM / CFM).

Commands (each has ``--help``):

  train     train a model into a workdir (resumes if it has checkpoints)
  evaluate  recall@K of the best model on a held-out split -> eval.json, plots
  ablate    does SSL help on this data? methods x seeds x data fractions, alpha tuned on validation
  baselines popularity, item-kNN and EASE under the same protocol (tuned on validation)
  tune      choose training knobs on the validation split (coordinate search), peers with the same budget
  export    a versioned SavedModel: raw query features -> top-k items (brute force or ScaNN)
  memory    what the embedding tables (+ optimizer slots) and the item corpus of a config will cost

Typical run (MovieLens, features from ``python -m pipelines features``)::

  python -m recsys_ssl train --features runs/ml/features --workdir runs/ml/cfm --preset movielens
  python -m recsys_ssl evaluate --workdir runs/ml/cfm
  python -m recsys_ssl export --workdir runs/ml/cfm --export_dir exports/retrieval --index scann

Config presets (with the command each was measured with and its cost): ``recsys_ssl/config.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Literal

import recsys_ssl  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from core import cli
from core import config as dataclass_config
from recsys_ssl import ablation as ablation_lib
from recsys_ssl import config as config_lib
from recsys_ssl import tuning as tuning_lib
from recsys_ssl.peers import DEFAULT_EASE_LAMBDAS, DEFAULT_KNN_NEIGHBOURS, EASE, EASE_MAX_ITEMS, PEERS

logger = logging.getLogger("recsys_ssl")

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")


def _config(preset: str, overrides) -> config_lib.Config:
    return dataclass_config.apply_overrides(config_lib.preset(preset), overrides)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    features: str = cli.features_flag()
    workdir: str = cli.workdir_flag("where config.json, run.json, checkpoints, best/ and TensorBoard logs go "
                                    "(re-running resumes)")
    preset: str = cli.preset_flag(sorted(config_lib.PRESETS), "movielens")
    overrides: tuple[str, ...] = cli.overrides_flag()
    strategy: Literal["default", "mirrored", "multi_worker_mirrored"] = cli.flag(
        "tf.distribute strategy (multi_worker_mirrored reads TF_CONFIG)", default="default")


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def train_command(options: TrainOptions) -> int:
    from recsys_ssl.train import Trainer

    config = _config(options.preset, options.overrides)
    summary = Trainer(options.features, options.workdir, config, make_strategy(options.strategy)).run()
    logger.info("training finished: %s", json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
    split: Literal["eval", "validation"] = cli.flag("the held-out split to score", default="eval")
    peers: str | None = cli.flag("a `baselines` --output_dir: the peers and each one's paired difference to this "
                                 "model in eval.json", default=None, must_exist="dir", metavar="DIR")


def evaluate_command(options: EvaluateOptions) -> int:
    from recsys_ssl.evaluate import evaluate

    result = evaluate(options.workdir, options.split, peers=options.peers)
    print(json.dumps(result["metrics"], indent=1))
    return 0


@dataclasses.dataclass(frozen=True)
class AblateOptions:
    features: str = cli.features_flag()
    output_dir: str = cli.output_dir_flag("where the runs and ablation.json / .md / .png go (resumable)")
    methods: tuple[str, ...] = cli.flag(
        "comma-separated methods: none (required baseline), dropout (whole-feature dropout views), rfm, cfm",
        default=("none", "dropout", "rfm", "cfm"))
    variant: tuple[str, ...] = cli.flag(
        "an extra method, e.g. cfm_example=ssl.method=cfm,ssl.mask_granularity=example (repeatable)",
        default=(), repeat=True, metavar="NAME=KEY=VALUE[,KEY=VALUE]")
    versus: tuple[str, ...] = cli.flag(
        "also report method A minus method B (paired bootstrap), e.g. cfm:rfm (repeatable)",
        default=(), repeat=True, metavar="A:B")
    seeds: tuple[int, ...] = cli.seeds_flag()
    fractions: tuple[float, ...] = cli.flag("training-data fractions, e.g. 0.25,0.5,1", default=(1.0,))
    alphas: tuple[float, ...] = cli.flag("ssl.weight grid tuned on the validation split with seed 0",
                                         default=(0.03, 0.1, 0.3, 1.0))
    tune_metric: Literal["overall", "tail"] = cli.flag(
        "validation recall@100 slice that picks alpha", default="overall")
    refit: bool = cli.flag("eval runs train on train + validation for the epochs chosen on validation (seed 0), "
                           "as the peers are refit", default=False)
    peers: str | None = cli.flag("a `baselines` --output_dir (computed there unless done): the peers in the report "
                                 "and each method's paired difference to the best peer", default=None, metavar="DIR")
    preset: str = cli.preset_flag(sorted(config_lib.PRESETS), "movielens")
    overrides: tuple[str, ...] = cli.overrides_flag()

    def __post_init__(self):
        if not self.seeds or not self.fractions or not self.alphas:
            raise ValueError("--seeds, --fractions and --alphas must not be empty")


def ablate_command(options: AblateOptions) -> int:
    _config(options.preset, options.overrides)  # fail before any run
    try:
        ablation_lib.parse_pairs(options.versus, ablation_lib.parse_methods(",".join(options.methods), options.variant))
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    return ablation_lib.main_ablate(options)


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    features: str = cli.features_flag()
    output_dir: str = cli.output_dir_flag("where runs/, tune.json and tune.md go (resumable)")
    grid: tuple[str, ...] = cli.flag("a knob and its values, searched in the order given, e.g. "
                                     "train.temperature=0.05,0.1 (repeatable)",
                                     default=(), repeat=True, metavar="KEY=V1,V2[,...]")
    rounds: int = cli.flag("passes over the grids", default=1)
    peers: bool = cli.flag("also tune popularity / item-kNN / EASE on validation with the same number of runs "
                           "(in OUTPUT_DIR/peers)", default=False)
    preset: str = cli.preset_flag(sorted(config_lib.PRESETS), "movielens")
    overrides: tuple[str, ...] = cli.overrides_flag()

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, received {self.rounds}")


def tune_command(options: TuneOptions) -> int:
    base = _config(options.preset, options.overrides)  # fail before any run
    try:
        grids = tuning_lib.parse_grids(options.grid)
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    document = tuning_lib.tune(options.features, options.output_dir, options.preset, options.overrides, grids,
                               options.rounds)
    if options.peers:
        tuning_lib.tune_peers(options.features, options.output_dir, len(document["runs"]), base.model.query_mode)
    print(tuning_lib.markdown(document))
    return 0


@dataclasses.dataclass(frozen=True)
class BaselinesOptions:
    features: str = cli.features_flag()
    output_dir: str = cli.output_dir_flag("writes OUTPUT_DIR/<peer>/eval.json, eval_hits.npz and baselines.json / .md")
    peers: tuple[str, ...] = cli.flag(f"comma-separated peers, of {', '.join(PEERS)}", default=PEERS)
    query_mode: Literal["user", "item"] = cli.flag(
        "user: a query is the user's items; item: the seed item (item-to-item)", default="user")
    ease_lambdas: tuple[float, ...] = cli.flag(
        "EASE lambda grid, extended until the chosen value has a decade on either side",
        default=DEFAULT_EASE_LAMBDAS)
    knn_neighbours: tuple[int, ...] = cli.flag("item-kNN neighbourhood sizes",
                                               default=DEFAULT_KNN_NEIGHBOURS)
    ease_max_items: int = cli.flag("EASE refuses larger corpora (dense items x items float64 matrices)",
                                   default=EASE_MAX_ITEMS)
    refit: bool = cli.flag("refit the eval peers on train + validation with the values chosen on validation "
                           "(false: fit them on train only)", default=True)

    def __post_init__(self):
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown or not self.peers:
            raise ValueError(f"--peers must be a non-empty list of {', '.join(PEERS)}, received {','.join(self.peers)!r}")
        if not self.ease_lambdas or min(self.ease_lambdas) <= 0:
            raise ValueError(f"--ease_lambdas must be positive numbers, received {self.ease_lambdas}")
        if not self.knn_neighbours or min(self.knn_neighbours) < 1:
            raise ValueError(f"--knn_neighbours must be integers >= 1, received {self.knn_neighbours}")
        if self.ease_max_items < 1:
            raise ValueError(f"--ease_max_items must be >= 1, received {self.ease_max_items}")


def baselines_command(options: BaselinesOptions) -> int:
    from recsys_ssl.baselines import markdown, run_baselines
    from recsys_ssl.schema import STATS_FILE

    if "ease" in options.peers:  # refused before any work: the corpus size is in the feature directory's stats
        with open(os.path.join(options.features, STATS_FILE)) as f:
            num_items = json.load(f)["num_items"]
        try:
            EASE.check_size(num_items, options.ease_max_items)
        except ValueError as error:
            raise cli.UsageError(str(error)) from None
    document = run_baselines(options.features, options.output_dir, options.peers, options.query_mode,
                             options.ease_lambdas, options.knn_neighbours, options.ease_max_items, options.refit)
    print(markdown(document))
    return 0


def module_docstring(module: str) -> str:
    """A module's docstring without importing it (``recsys_ssl.baselines`` loads TensorFlow)."""
    import ast
    import importlib.util

    with open(importlib.util.find_spec(module).origin) as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
    export_dir: str = cli.export_dir_flag("writes EXPORT_DIR/<next version>/ (atomically)")
    index: Literal["brute_force", "scann"] = cli.flag(
        "brute_force (plain TF ops: loads in stock TF Serving) or scann (needs this project's server)",
        default="brute_force")
    k: int = cli.flag("items returned per query", default=100)
    num_leaves: int | None = cli.flag("scann: partitions of the index (default ~2 sqrt(items), at most 4,000)",
                                      default=None)
    leaves_to_search: int | None = cli.flag("scann: partitions searched per query (default a fifth of "
                                            "--num_leaves, at most 200)", default=None)
    reorder: int | None = cli.flag("scann: candidates re-scored exactly (default max(2k, 200, items / 5,000); "
                                   "recall@10 at 10M items: 500 -> 0.89, 2,000 -> 0.97)", default=None)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, received {self.k}")
        scann = {"--num_leaves": self.num_leaves, "--leaves_to_search": self.leaves_to_search,
                 "--reorder": self.reorder}
        given = [name for name, value in scann.items() if value is not None]
        if given and self.index != "scann":
            raise ValueError(f"{', '.join(given)} tune the ScaNN index: use them with --index scann")
        for name in given:
            if scann[name] < 1:
                raise ValueError(f"{name} must be >= 1, received {scann[name]}")


def export_command(options: ExportOptions) -> int:
    from recsys_ssl.export import export

    scann_options = {"num_leaves": options.num_leaves, "num_leaves_to_search": options.leaves_to_search,
                     "num_reordering_candidates": options.reorder}
    print(export(options.workdir, options.export_dir, options.index, options.k, scann_options))
    return 0


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
    features: str = cli.features_flag()
    preset: str = cli.preset_flag(sorted(config_lib.PRESETS), "movielens")
    overrides: tuple[str, ...] = cli.overrides_flag()


def memory_command(options: MemoryOptions) -> int:
    from recsys_ssl import memory
    from recsys_ssl import schema as fs
    from recsys_ssl.data import read_vocabularies

    config = _config(options.preset, options.overrides)
    schema = fs.FeatureSchema.load(options.features)
    sizes = {name: len(values) for name, values in
             read_vocabularies(options.features, schema, config.model.min_count).items()}
    report = memory.memory_report(schema, sizes, config)
    print(memory.markdown(report))
    print(json.dumps(report))
    return 0


COMMANDS = (
    cli.Command("train", TrainOptions, train_command,
                help="train a model into a workdir (resumes if it has checkpoints)"),
    cli.Command("evaluate", EvaluateOptions, evaluate_command,
                help="recall@K of the best model on a held-out split -> eval.json, recall_at_k.png"),
    cli.Command("ablate", AblateOptions, ablate_command,
                help="does SSL help on this data? methods x seeds x data fractions, alpha tuned on validation",
                description=ablation_lib.__doc__),
    cli.Command("baselines", BaselinesOptions, baselines_command,
                help="popularity, item-kNN and EASE under the same protocol (tuned on validation)",
                description=module_docstring("recsys_ssl.baselines"), renamed={"--no_refit": "--refit=false"}),
    cli.Command("tune", TuneOptions, tune_command,
                help="choose training knobs on the validation split (coordinate search), optionally the peers alike",
                description=tuning_lib.__doc__),
    cli.Command("export", ExportOptions, export_command,
                help="versioned SavedModel: raw query features -> top-k items"),
    cli.Command("memory", MemoryOptions, memory_command,
                help="memory of the embedding tables (+ optimizer slots) and the item corpus of a config",
                description="Prints, for the config (--preset, --set) on the feature directory's vocabularies, every "
                            "embedding table's rows and MiB with and without the optimizer's slots, and the item "
                            "corpus (markdown, then JSON). What is and is not counted: recsys_ssl/memory.py."),
)


def main(argv: list[str] | None = None) -> int:
    return cli.run_commands("python -m recsys_ssl", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
