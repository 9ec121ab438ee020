"""``python -m recsys_ssl <command>``: two-tower retrieval with SSL regularisation (RFM / CFM).

Commands (each has ``--help``):

  train     train a model into a workdir (resumes if it has checkpoints)
  evaluate  recall@K of the best model on a held-out split -> eval.json, plots
  ablate    does SSL help on this data? methods x seeds x data fractions, alpha tuned on validation
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
import sys
from typing import Literal

import recsys_ssl  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from core import cli
from core import config as dataclass_config
from recsys_ssl import ablation as ablation_lib
from recsys_ssl import config as config_lib

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


def evaluate_command(options: EvaluateOptions) -> int:
    from recsys_ssl.evaluate import evaluate

    result = evaluate(options.workdir, options.split)
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
class ExportOptions:
    workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
    export_dir: str = cli.export_dir_flag("writes EXPORT_DIR/<next version>/ (atomically)")
    index: Literal["brute_force", "scann"] = cli.flag(
        "brute_force (plain TF ops: loads in stock TF Serving) or scann (needs this project's server)",
        default="brute_force")
    k: int = cli.flag("items returned per query", default=100)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, received {self.k}")


def export_command(options: ExportOptions) -> int:
    from recsys_ssl.export import export

    print(export(options.workdir, options.export_dir, options.index, options.k))
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
