"""``python -m text_ood {pretrain,train,evaluate,export}``: MLKD text OoD detection (Wu et al. 2023).

Typical run (CLINC150, CPU preset)::

  python -m text_ood pretrain --workdir runs/pretrain \
      --corpus $SSL_DATA_DIR/text/general/*.txt $SSL_DATA_DIR/text/sst2/train.tsv \
      --dataset clinc150
  python -m text_ood train --dataset clinc150 --workdir runs/clinc --teacher runs/pretrain
  python -m text_ood evaluate --workdir runs/clinc
  python -m text_ood export --workdir runs/clinc --export_dir exports/ood

Sentence-encoder detectors (k-NN, Mahalanobis) and the MLKD + k-NN hybrid::

  python -m text_ood train --dataset clinc150 --workdir runs/clinc \
      --encoder $SSL_DATA_DIR/models/all-MiniLM-L6-v2 --detectors knn,mahalanobis,hybrid
  python -m text_ood export --workdir runs/clinc --export_dir exports/knn --detector knn

Choosing the detector to deploy without OoD data (then `export` exports the choice by default)::

  python -m text_ood select --workdir runs/clinc
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from core.config import ConfigError, apply_overrides
from core.env import DATA_DIR_ENV, data_root

logger = logging.getLogger("text_ood")


def _parser() -> argparse.ArgumentParser:
    from text_ood.config import PRESETS
    from text_ood.data import DATASETS, DEFAULT_CORPUS
    from text_ood.detectors import DEFAULT_DETECTORS, DETECTORS

    parser = argparse.ArgumentParser(prog="python -m text_ood", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbosity", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_config_flags(p):
        p.add_argument("--preset", default="cpu", choices=PRESETS,
                       help="model/optimisation preset (default: cpu = 4 x 256 GPT-2)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, repeatable, e.g. --set student.epochs=8")
        p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")

    def add_data_flags(p, required: bool):
        p.add_argument("--dataset", choices=DATASETS, required=required,
                       help="clinc150, or 'files' (DATA_DIR/{id_train,id_val,id_test,ood_test}"
                            ".{txt,jsonl,tsv})")
        p.add_argument("--data_dir", default=None,
                       help=f"data set directory (default: ${DATA_DIR_ENV}, plus text/clinc150 "
                            "for clinc150)")

    p = commands.add_parser("pretrain", allow_abbrev=False, help="train the tokenizer and a general-English LM")
    p.add_argument("--corpus", nargs="+", default=None, metavar="FILE",
                   help="pre-training corpus files (.txt, .jsonl, .tsv); never the evaluation set. "
                        f"Default: under ${DATA_DIR_ENV}: " + ", ".join(DEFAULT_CORPUS))
    p.add_argument("--workdir", required=True, help="output: tokenizer/, pretrain/, logs/, config.json")
    add_data_flags(p, required=False)
    p.description = ("Trains SentencePiece on the corpus (plus the ID training texts of --dataset, "
                     "if given: tokenizer only) and pre-trains a GPT-2-architecture LM for "
                     "pretrain.epochs passes; the ID validation texts of --dataset are only "
                     "measured (perplexity per pass). The model section is the teacher's "
                     "architecture.")
    add_config_flags(p)

    p = commands.add_parser("train", allow_abbrev=False, help="fine-tune the teacher, distil the MLKD student, "
                                          "train the from-scratch baseline")
    add_data_flags(p, required=True)
    p.add_argument("--workdir", required=True,
                   help="output: one directory per stage (resumable), logs/, config.json, run.json")
    teacher = p.add_mutually_exclusive_group()
    teacher.add_argument("--teacher", metavar="PRETRAIN_DIR",
                         help="a `pretrain` workdir (needed by the language-model detectors)")
    teacher.add_argument("--teacher_hf", metavar="HF_DIR",
                         help="a local Hugging Face GPT-2-family checkpoint with its tokenizer")
    p.add_argument("--teacher_pass", type=int, default=None, metavar="N",
                   help="start the teacher from pre-training pass N (PRETRAIN_DIR/pretrain/epochs/N) "
                        "instead of the pass with the best held-out perplexity")
    p.add_argument("--encoder", metavar="ENCODER_DIR",
                   help="a local Hugging Face BERT-family sentence encoder (config.json, vocab.txt, "
                        "model.safetensors), e.g. all-MiniLM-L6-v2: needed by knn, mahalanobis, "
                        "hybrid. Teacher and encoder given earlier for --workdir are remembered")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                   help=f"comma-separated detectors to train; registered: {sorted(DETECTORS)}")
    p.add_argument("--require_better_teacher", action="store_true",
                   help="fail (exit 1) before distilling when the fine-tuned teacher's ID-validation "
                        "perplexity is not below the from-scratch model's (default: warn)")
    add_config_flags(p)

    p = commands.add_parser("evaluate", allow_abbrev=False, help="metrics of every trained detector -> eval.json, roc.png")
    p.add_argument("--workdir", required=True, help="a `train` workdir")
    p.add_argument("--data_dir", default=None, help="overrides the data directory in run.json")
    p.add_argument("--detectors", default=None,
                   help="comma-separated detectors (default: those `train` trained)")

    p = commands.add_parser("select", allow_abbrev=False,
                            help="choose the detector to deploy without OoD data -> selection.json")
    p.description = ("Ranks every trained detector, a k-NN / Mahalanobis settings grid and hybrids "
                     "by AUROC of ID validation texts vs proxy outliers (general text held out from "
                     "pre-training, length-matched; never test or OoD data); writes "
                     "selection.json, selection.png and detectors/selected/, which `export` "
                     "then exports by default.")
    p.add_argument("--workdir", required=True, help="a `train` workdir")
    p.add_argument("--data_dir", default=None, help="overrides the data directory in run.json")
    p.add_argument("--proxy", nargs="+", default=None, metavar="FILE",
                   help="proxy-outlier files (.txt, .jsonl, .tsv; never evaluation data) instead of "
                        "the teacher's held-out pre-training corpus (PRETRAIN_DIR/corpus.json, else "
                        f"the default corpus under ${DATA_DIR_ENV})")
    p.add_argument("--proxy_texts", type=int, default=0,
                   help="proxy texts to draw (default 0: as many as ID validation texts, at least "
                        "500 and at most 2,000)")
    p.add_argument("--no_grid", action="store_true",
                   help="rank only the trained detectors and hybrids of them (no settings grid)")
    p.add_argument("--choose", default=None, metavar="LABEL",
                   help="save this candidate of the ranking instead of the best (recorded as a user "
                        "override in selection.json)")

    p = commands.add_parser("export", allow_abbrev=False, help="versioned SavedModel taking raw strings")
    p.add_argument("--workdir", required=True, help="a `train` workdir")
    p.add_argument("--export_dir", required=True, help="writes EXPORT_DIR/<next version>/")
    p.add_argument("--data_dir", default=None, help="overrides the data directory in run.json")
    p.add_argument("--detector", default=None,
                   help="the detector to export (default: the one `select` chose when the workdir "
                        "has selection.json, else mlkd)")
    return parser


def _resolve_data_dir(data_dir: str | None) -> str:
    root = data_root(data_dir)
    if root is None:
        raise SystemExit(f"no data directory: pass --data_dir or set ${DATA_DIR_ENV}")
    return root


def _build_config(args):
    from text_ood.config import preset

    config = apply_overrides(preset(args.preset), args.overrides)
    if args.seed is not None:
        config = apply_overrides(config, [f"seed={args.seed}"])
    return config


def _open_workdir(args):
    from text_ood.data import load_dataset
    from text_ood.workdir import RUN_FILE, load_context

    run_path = os.path.join(args.workdir, RUN_FILE)
    if not os.path.isfile(run_path):
        raise SystemExit(f"{args.workdir} is not a trained workdir (no {RUN_FILE}); run `train` first")
    with open(run_path) as f:
        run = json.load(f)
    data_dir = args.data_dir or run.get("data_dir") or data_root()
    dataset = load_dataset(run["dataset"], data_dir)
    return load_context(args.workdir, dataset), run


def _update_run(run_path: str, **fields) -> None:
    """Sets ``fields`` in the workdir's run.json."""
    with open(run_path) as f:
        run = json.load(f)
    run.update(fields)
    with open(run_path, "w") as f:
        json.dump(run, f, indent=2)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.verbosity),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # checkpoint-sharding chatter
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    from text_ood.data import DataError, default_corpus, load_dataset
    from text_ood.detectors import DETECTORS, STUDENT_DETECTORS, create_detector
    from text_ood.tokenizer import TokenizerError

    try:
        if args.command == "pretrain":
            from text_ood.stages import pretrain

            config = _build_config(args)
            extra, monitor = [], []
            if args.dataset:
                id_data = load_dataset(args.dataset, _resolve_data_dir(args.data_dir), config.seed)
                extra, monitor = id_data.id_train, id_data.id_val
            corpus = args.corpus or default_corpus(_resolve_data_dir(None))
            summary = pretrain(corpus, args.workdir, config, tokenizer_extra_texts=extra,
                               monitor_texts=monitor)
            logger.info("pre-training done: validation perplexity %.3f", summary["best_val_perplexity"])
        elif args.command == "train":
            from text_ood.curves import plot_validation_perplexity
            from text_ood.stages import teacher_gate, train_detector
            from text_ood.workdir import RUN_FILE, prepare_training

            config = _build_config(args)
            names = [n.strip() for n in args.detectors.split(",") if n.strip()]
            unknown = [n for n in names if n not in DETECTORS]
            if unknown:
                raise SystemExit(f"unknown detectors {unknown}; registered: {sorted(DETECTORS)}")
            if "selected" in names:
                raise SystemExit("`selected` is chosen by `python -m text_ood select`, not trained")
            data_dir = _resolve_data_dir(args.data_dir)
            dataset = load_dataset(args.dataset, data_dir, config.seed)
            logger.info("data set %s: %s", dataset.name, dataset.summary())
            ctx = prepare_training(args.workdir, config, dataset, teacher_dir=args.teacher,
                                   teacher_hf=args.teacher_hf, teacher_pass=args.teacher_pass,
                                   data_dir=data_dir, encoder_dir=args.encoder)
            run_path = os.path.join(args.workdir, RUN_FILE)
            distilled = set(names) | (set(config.encoder.hybrid_components) if "hybrid" in names
                                      else set())
            if distilled & set(STUDENT_DETECTORS):
                for name in sorted(distilled & set(STUDENT_DETECTORS)):
                    ctx.require_language_models(name)
                gate = teacher_gate(ctx, dataset.id_train)
                _update_run(run_path, teacher_gate=gate)
                if gate["teacher_better"]:
                    logger.info("%s", gate["message"])
                elif args.require_better_teacher:
                    logger.error("%s (--require_better_teacher)", gate["message"])
                    return 1
                else:
                    logger.warning("%s", gate["message"])
            for name in names:
                train_detector(ctx, name)
                logger.info("detector %s trained and saved in %s", name, ctx.detector_dir(name))
            with open(run_path) as f:
                trained = set(json.load(f).get("detectors", [])) | set(names)
            _update_run(run_path, detectors=sorted(trained))
            curves = plot_validation_perplexity(args.workdir)
            if curves:
                logger.info("validation perplexity per epoch of every stage: %s", curves)
        elif args.command == "evaluate":
            from text_ood.evaluate import evaluate_detectors

            ctx, run = _open_workdir(args)
            names = ([n.strip() for n in args.detectors.split(",") if n.strip()]
                     if args.detectors else run.get("detectors", []))
            if not names:
                raise SystemExit("no detectors to evaluate: `train` recorded none; pass --detectors")
            evaluate_detectors(ctx, names)
        elif args.command == "select":
            from text_ood.selection import select_detector

            ctx, run = _open_workdir(args)
            document = select_detector(ctx, args.proxy, args.proxy_texts, grid=not args.no_grid,
                                       data_root=data_root(), choose=args.choose)
            _update_run(os.path.join(args.workdir, "run.json"),
                        detectors=sorted(set(run.get("detectors", [])) | {"selected"}))
            chosen = document["selected"]
            logger.info("selected %s (proxy AUROC %.2f, FAR95 %.2f; %d candidates): %s", chosen["label"],
                        100 * chosen["proxy_auroc"], 100 * chosen["proxy_far95"],
                        len(document["candidates"]), os.path.join(args.workdir, "selection.json"))
        elif args.command == "export":
            from text_ood.export import export_detector
            from text_ood.selection import SELECTION_FILE, read_selection

            ctx, run = _open_workdir(args)
            name, metadata = args.detector, {}
            if name is None:
                if os.path.isfile(os.path.join(args.workdir, SELECTION_FILE)):
                    name = "selected"
                    chosen = read_selection(args.workdir)["selected"]
                    metadata["selected"] = {k: chosen[k] for k in ("label", "proxy_auroc", "proxy_far95")}
                    logger.info("exporting the detector `select` chose: %s (%s)", chosen["label"],
                                os.path.join(args.workdir, SELECTION_FILE))
                else:
                    name = "mlkd"
                    logger.info("exporting mlkd (no %s in %s; `select` chooses a detector)",
                                SELECTION_FILE, args.workdir)
            detector = create_detector(name, ctx).restore(ctx.detector_dir(name))
            check = ctx.dataset.id_val[:32] + ctx.dataset.ood_test[:32]
            path = export_detector(detector, ctx.dataset.id_val, args.export_dir,
                                   metadata={"workdir": os.path.abspath(args.workdir),
                                             "dataset": run["dataset"], **metadata},
                                   check_texts=check)
            print(path)
    except (ConfigError, DataError, TokenizerError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    except Exception as error:  # noqa: BLE001  (export errors carry their own message)
        from text_ood.detectors import RequiresFittingError
        from text_ood.scorers import ExportError

        if isinstance(error, (ExportError, RequiresFittingError)):
            logger.error("%s", error)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
