"""``python -m text_ood <command>``: MLKD text OoD detection (Wu et al. 2023) and sentence-encoder detectors.

Typical run (CLINC150, CPU preset)::

  python -m text_ood pretrain --workdir runs/pretrain --dataset clinc150   # default corpus under $SSL_DATA_DIR
  python -m text_ood train --dataset clinc150 --workdir runs/clinc --teacher runs/pretrain
  python -m text_ood evaluate --workdir runs/clinc
  python -m text_ood export --workdir runs/clinc --export_dir exports/ood

Commands (each has ``--help``): pretrain (tokenizer + general-English LM), train (teacher
fine-tuning, MLKD distillation, from-scratch baseline, encoder detectors), evaluate (AUROC / AUPR /
FAR95 of every trained detector), select (the detector to deploy, chosen without OoD data),
export (versioned SavedModel taking raw strings; the selected detector by default). Config
presets, with their measured cost: ``text_ood/config.py``.

Sentence-encoder detectors (k-NN, Mahalanobis) and the MLKD + k-NN hybrid::

  python -m text_ood train --dataset clinc150 --workdir runs/clinc \
      --encoder $SSL_DATA_DIR/models/all-MiniLM-L6-v2 --detectors knn,mahalanobis,hybrid
  python -m text_ood export --workdir runs/clinc --export_dir exports/knn --detector knn

Choosing the detector to deploy without OoD data (then ``export`` exports the choice by default)::

  python -m text_ood select --workdir runs/clinc
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from core import cli
from core.config import apply_overrides
from core.workdir import read_run, update_run
from text_ood.config import PRESETS
from text_ood.data import DATASETS, DEFAULT_CORPUS
from text_ood.detectors import DEFAULT_DETECTORS, DETECTORS, SELECTED

logger = logging.getLogger("text_ood")

SEED_RENAMED = {"--seed": "--set seed=N"}


def _dataset_flag(required: bool):
    return cli.flag("clinc150 (under the data root), or files (--input DIR with "
                    "{id_train,id_val,id_test,ood_test}.{txt,jsonl,tsv})", default=dataclasses.MISSING if required
                    else None, choices=DATASETS)


def _input_flag():
    return cli.flag("--dataset files: the directory holding its split files", default=None, must_exist="dir",
                    metavar="DIR")


def _dataset_location(dataset: str, data_dir: str | None, input_dir: str | None) -> str:
    """Where ``load_dataset`` reads ``dataset``: the data root, or ``--input`` for ``files``."""
    if dataset == "files":
        if input_dir is None:
            raise cli.UsageError("--dataset files needs --input DIR")
        return input_dir
    if input_dir is not None:
        raise cli.UsageError(f"--input is for --dataset files; {dataset} is read from the data root (--data_dir)")
    return cli.resolve_data_dir(data_dir)


class _UserInput:
    """Turns the errors of checking what the user gave (data, teacher, encoder) into usage errors (exit 2)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, (ValueError, FileNotFoundError)) and not issubclass(
                kind, cli.UsageError):
            raise cli.UsageError(str(error)) from None
        return False


def _config(preset_name: str, overrides):
    from text_ood.config import preset

    return apply_overrides(preset(preset_name), overrides)


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
    workdir: str = cli.workdir_flag("where tokenizer/, pretrain/ (one snapshot per pass), logs/ and config.json go "
                                    "(re-running resumes)")
    corpus: tuple[str, ...] = cli.flag(
        "comma-separated pre-training corpus files (.txt, .jsonl, .tsv); never an evaluation set. Default, "
        "under the data root: " + ", ".join(DEFAULT_CORPUS), default=(), metavar="FILES")
    dataset: str | None = _dataset_flag(required=False)
    data_dir: str | None = cli.data_dir_flag()
    input: str | None = _input_flag()
    preset: str = cli.preset_flag(PRESETS, "cpu")
    overrides: tuple[str, ...] = cli.overrides_flag()


def pretrain_command(options: PretrainOptions) -> int:
    from text_ood.data import default_corpus, load_dataset
    from text_ood.stages import pretrain

    config = _config(options.preset, options.overrides)
    extra, monitor = [], []
    with _UserInput():
        if options.dataset:
            location = _dataset_location(options.dataset, options.data_dir, options.input)
            id_data = load_dataset(options.dataset, location, config.seed)
            extra, monitor = id_data.id_train, id_data.id_val
        missing = [path for path in options.corpus if not os.path.isfile(path)]
        if missing:
            raise cli.UsageError(f"--corpus: no such files {missing}")
        corpus = list(options.corpus) or default_corpus(cli.resolve_data_dir(options.data_dir))
    summary = pretrain(corpus, options.workdir, config, tokenizer_extra_texts=extra, monitor_texts=monitor)
    logger.info("pre-training done: validation perplexity %.3f", summary["best_val_perplexity"])
    return 0


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    dataset: str = _dataset_flag(required=True)
    workdir: str = cli.workdir_flag("one directory per stage (resumable), detectors/, logs/, config.json, run.json")
    data_dir: str | None = cli.data_dir_flag()
    input: str | None = _input_flag()
    teacher: str | None = cli.flag("a `pretrain` workdir (needed by the language-model detectors)", default=None,
                                   must_exist="dir", metavar="PRETRAIN_DIR")
    teacher_hf: str | None = cli.flag("a local Hugging Face GPT-2-family checkpoint with its tokenizer",
                                      default=None, must_exist="dir", metavar="HF_DIR")
    teacher_pass: int | None = cli.flag(
        "start the teacher from pre-training pass N (PRETRAIN_DIR/pretrain/epochs/N) instead of the pass with the "
        "best held-out perplexity", default=None, metavar="N")
    encoder: str | None = cli.flag(
        "a local Hugging Face BERT-family sentence encoder (config.json, vocab.txt, model.safetensors), e.g. "
        "all-MiniLM-L6-v2: needed by knn, mahalanobis, hybrid. Teacher and encoder given earlier for --workdir "
        "are remembered", default=None, must_exist="dir", metavar="ENCODER_DIR")
    detectors: tuple[str, ...] = cli.flag(f"comma-separated detectors to train; registered: {sorted(DETECTORS)}",
                                          default=DEFAULT_DETECTORS)
    require_better_teacher: bool = cli.flag(
        "fail (exit 1) before distilling when the fine-tuned teacher's ID-validation perplexity is not below the "
        "from-scratch model's (default: warn)", default=False)
    preset: str = cli.preset_flag(PRESETS, "cpu")
    overrides: tuple[str, ...] = cli.overrides_flag()

    def __post_init__(self):
        unknown = [n for n in self.detectors if n not in DETECTORS]
        if unknown or not self.detectors:
            raise ValueError(f"--detectors: unknown {unknown or 'none given'}; registered: {sorted(DETECTORS)}")
        if SELECTED in self.detectors:
            raise ValueError(f"--detectors: `{SELECTED}` is chosen by `python -m text_ood select`, not trained")
        if self.teacher and self.teacher_hf:
            raise ValueError("give one teacher: --teacher PRETRAIN_DIR (from `pretrain`) or --teacher_hf HF_DIR")


def train_command(options: TrainOptions) -> int:
    from text_ood.curves import plot_validation_perplexity
    from text_ood.data import load_dataset
    from text_ood.detectors import STUDENT_DETECTORS
    from text_ood.stages import teacher_gate, train_detector
    from text_ood.workdir import prepare_training

    config = _config(options.preset, options.overrides)
    names = list(options.detectors)
    distilled = set(names) | (set(config.encoder.hybrid_components) if "hybrid" in names else set())
    with _UserInput():
        location = _dataset_location(options.dataset, options.data_dir, options.input)
        dataset = load_dataset(options.dataset, location, config.seed)
        logger.info("data set %s: %s", dataset.name, dataset.summary())
        ctx = prepare_training(options.workdir, config, dataset, teacher_dir=options.teacher,
                               teacher_hf=options.teacher_hf, teacher_pass=options.teacher_pass,
                               data_dir=location, encoder_dir=options.encoder)
        for name in sorted(distilled & set(STUDENT_DETECTORS)):
            ctx.require_language_models(name)
    if distilled & set(STUDENT_DETECTORS):
        gate = teacher_gate(ctx, dataset.id_train)
        update_run(options.workdir, teacher_gate=gate)
        if gate["teacher_better"]:
            logger.info("%s", gate["message"])
        elif options.require_better_teacher:
            raise cli.JobError(f"{gate['message']} (--require_better_teacher)")
        else:
            logger.warning("%s", gate["message"])
    for name in names:
        train_detector(ctx, name)
        logger.info("detector %s trained and saved in %s", name, ctx.detector_dir(name))
    trained = set(read_run(options.workdir).get("detectors", [])) | set(names)
    update_run(options.workdir, detectors=sorted(trained))
    curves = plot_validation_perplexity(options.workdir)
    if curves:
        logger.info("validation perplexity per epoch of every stage: %s", curves)
    return 0


def _open_workdir(workdir: str, data_dir: str | None):
    """The training context of a `train` workdir and its run.json (the data set found again)."""
    from text_ood.data import load_dataset
    from text_ood.workdir import load_context

    run = read_run(workdir)
    if "dataset" not in run:
        raise cli.UsageError(f"{workdir} is not a trained workdir (no run.json); run `train` first")
    location = data_dir or run.get("data_dir") or cli.resolve_data_dir(None)
    with _UserInput():
        return load_context(workdir, load_dataset(run["dataset"], location)), run


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
    data_dir: str | None = cli.flag("where the data set is read (default: the location recorded in run.json)",
                                    default=None, must_exist="dir", metavar="DIR")
    detectors: tuple[str, ...] = cli.flag("comma-separated detectors (default: those `train` trained)", default=())


def evaluate_command(options: EvaluateOptions) -> int:
    from text_ood.evaluate import evaluate_detectors

    ctx, run = _open_workdir(options.workdir, options.data_dir)
    names = list(options.detectors) or run.get("detectors", [])
    if not names:
        raise cli.UsageError("no detectors to evaluate: `train` recorded none; pass --detectors")
    evaluate_detectors(ctx, names)
    return 0


@dataclasses.dataclass(frozen=True)
class SelectOptions:
    workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
    data_dir: str | None = cli.flag("where the data set is read (default: the location recorded in run.json)",
                                    default=None, must_exist="dir", metavar="DIR")
    proxy: tuple[str, ...] = cli.flag(
        "comma-separated proxy-outlier files (.txt, .jsonl, .tsv; never evaluation data) instead of the teacher's "
        "held-out pre-training corpus (PRETRAIN_DIR/corpus.json, else the default corpus under the data root)",
        default=(), metavar="FILES")
    proxy_texts: int = cli.flag("proxy texts to draw; 0 = as many as ID validation texts, at least 500 and at "
                                "most 2,000", default=0, metavar="N")
    grid: bool = cli.flag("also rank a k-NN / Mahalanobis / classifier settings grid and hybrids of the best "
                          "settings (false: the trained detectors and hybrids of them only)", default=True)
    choose: str | None = cli.flag("save this candidate label of the ranking instead of the best (recorded as a "
                                  "user override in selection.json)", default=None, metavar="LABEL")

    def __post_init__(self):
        if self.proxy_texts < 0:
            raise ValueError(f"--proxy_texts: expected 0 (automatic) or a positive count, received {self.proxy_texts}")


def select_command(options: SelectOptions) -> int:
    from core.env import data_root
    from text_ood.selection import select_detector

    missing = [path for path in options.proxy if not os.path.isfile(path)]
    if missing:
        raise cli.UsageError(f"--proxy: no such files {missing}")
    ctx, run = _open_workdir(options.workdir, options.data_dir)
    with _UserInput():  # an unknown --choose label, or no trained detector
        document = select_detector(ctx, list(options.proxy) or None, options.proxy_texts, grid=options.grid,
                                   data_root=data_root(None), choose=options.choose)
    update_run(options.workdir, detectors=sorted(set(run.get("detectors", [])) | {SELECTED}))
    chosen = document["selected"]
    logger.info("selected %s (proxy AUROC %.2f, FAR95 %.2f; %d candidates): %s", chosen["label"],
                100 * chosen["proxy_auroc"], 100 * chosen["proxy_far95"], len(document["candidates"]),
                os.path.join(options.workdir, "selection.json"))
    return 0


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
    export_dir: str = cli.export_dir_flag("writes EXPORT_DIR/<next version>/ (atomically)")
    data_dir: str | None = cli.flag("where the data set is read (default: the location recorded in run.json)",
                                    default=None, must_exist="dir", metavar="DIR")
    detector: str | None = cli.flag("the detector to export (default: the one `select` chose when the workdir has "
                                    "selection.json, else mlkd)", default=None, choices=tuple(sorted(DETECTORS)))


def export_command(options: ExportOptions) -> int:
    from text_ood.detectors import RequiresFittingError, create_detector
    from text_ood.export import export_detector
    from text_ood.scorers import ExportError
    from text_ood.detectors.selected import SELECTION_FILE, read_selection

    ctx, run = _open_workdir(options.workdir, options.data_dir)
    name, metadata = options.detector, {}
    if name is None and os.path.isfile(os.path.join(options.workdir, SELECTION_FILE)):
        name, chosen = SELECTED, read_selection(options.workdir)["selected"]
        metadata["selected"] = {k: chosen[k] for k in ("label", "proxy_auroc", "proxy_far95")}
        logger.info("exporting the detector `select` chose: %s (%s)", chosen["label"],
                    os.path.join(options.workdir, SELECTION_FILE))
    elif name is None:
        name = "mlkd"
        logger.info("exporting mlkd (no %s in %s; `select` chooses a detector)", SELECTION_FILE, options.workdir)
    try:  # a detector that was never trained, or one that cannot be exported, is a usage error
        detector = create_detector(name, ctx).restore(ctx.detector_dir(name))
        check = ctx.dataset.id_val[:32] + ctx.dataset.ood_test[:32]
        path = export_detector(detector, ctx.dataset.id_val, options.export_dir,
                               metadata={"workdir": os.path.abspath(options.workdir), "dataset": run["dataset"],
                                         **metadata},
                               check_texts=check)
    except (ExportError, RequiresFittingError) as error:
        raise cli.UsageError(str(error)) from None
    print(path)
    return 0


COMMANDS = (
    cli.Command("pretrain", PretrainOptions, pretrain_command, renamed=SEED_RENAMED,
                help="train the tokenizer and a general-English LM (the teacher before fine-tuning)",
                description="Trains SentencePiece on the corpus (plus the ID training texts of --dataset, if given: "
                            "tokenizer only) and pre-trains a GPT-2-architecture LM for pretrain.epochs passes; the "
                            "ID validation texts of --dataset are only measured (perplexity per pass). The model "
                            "section is the teacher's architecture."),
    cli.Command("train", TrainOptions, train_command, renamed=SEED_RENAMED,
                help="fine-tune the teacher, distil the MLKD student, train the from-scratch baseline and encoder "
                     "detectors"),
    cli.Command("evaluate", EvaluateOptions, evaluate_command,
                help="AUROC / AUPR / FAR95 of every trained detector -> eval.json, roc.png"),
    cli.Command("select", SelectOptions, select_command, renamed={"--no_grid": "--grid=false"},
                help="choose the detector to deploy without OoD data -> selection.json, detectors/selected",
                description="Ranks every trained detector, a k-NN / Mahalanobis / classifier settings grid and "
                            "hybrids by the AUROC of ID validation texts vs proxy outliers (general text held out "
                            "from pre-training, length-matched; never test or OoD data); writes selection.json, "
                            "selection.png and detectors/selected/, which `export` then exports by default."),
    cli.Command("export", ExportOptions, export_command,
                help="versioned SavedModel taking raw strings (the selected detector by default)"),
)


def main(argv: list[str] | None = None) -> int:
    return cli.run_commands("python -m text_ood", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
