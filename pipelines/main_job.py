"""The main job: the whole system end to end on the bundled defaults.

``python -m pipelines main_job [--workdir runs/main] [--preset default|smoke]``

Steps (each is the project's own command, run as a subprocess with its log in
``WORKDIR/logs/<step>.log``; a finished step is skipped when the job is re-run):

1. MovieLens features (Beam, ``--split user_time``)
2. CFM two-tower training (early stopping on validation), 3. evaluation, 4. ScaNN export
5. the TF-Serving-compatible server on the export, queried over REST for a few users
6. CLINC150: tokenizer + general-English LM pre-training, 7. teacher fine-tuning, from-scratch
   LM and MLKD distillation, and (``default``) the all-MiniLM-L6-v2 k-NN detector,
   8. ``text_ood select``: the detector to deploy, chosen without OoD data (k-NN, a hybrid, or an
   LM), 9. evaluation of every detector, 10. export of the selected detector
11. batch scoring (Beam RunInference) of the CLINC150 test texts with that export
12. a printed summary: recall table, OoD metrics (the selected detector beside teacher, from
    scratch and MLKD), where the artefacts and plots are.

The presets (``pipelines/presets.py``, with their measured cost): ``default`` (short schedules,
not the benchmarks'), ``smoke`` (tiny models, a few steps: checks the wiring in about 3 minutes).
Data comes from ``$SSL_DATA_DIR`` (or ``--data_dir``).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request

from core import cli
from core.net import free_port
from pipelines.presets import MAIN_JOB_PRESETS, MainJobPreset, main_job_preset
from pipelines.scoring.batch_ood_scoring import SCORES_PREFIX, SUMMARY_FILE, read_summary

logger = logging.getLogger("main_job")

class StepFailed(RuntimeError):
    pass


class MainJob:
    """Runs the steps in order, skipping those whose outputs exist (see the module docstring)."""

    def __init__(self, workdir: str, data_dir: str, preset: str):
        self.workdir, self.data_dir = os.path.abspath(workdir), data_dir
        self.preset: MainJobPreset = main_job_preset(preset)
        self.preset_name = preset
        self.python = sys.executable
        self.paths = {name: os.path.join(self.workdir, name) for name in (
            "features", "recsys", "exports/retrieval", "text_pretrain", "text_train", "exports/ood", "scored", "logs",
            "data")}
        os.makedirs(self.paths["logs"], exist_ok=True)
        self.timings: dict[str, float] = {}

    def run_step(self, name: str, command: list[str], done_marker: str) -> None:
        """Runs one step unless ``done_marker`` exists; fails with the log's tail if it fails."""
        if os.path.exists(done_marker):
            logger.info("step %-16s already done (%s)", name, os.path.relpath(done_marker, self.workdir))
            return
        log_path = os.path.join(self.paths["logs"], f"{name}.log")
        logger.info("step %-16s running: %s", name, " ".join(command[1:]))
        started = time.time()
        with open(log_path, "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        self.timings[name] = time.time() - started
        if code != 0:
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-25:])
            raise StepFailed(f"step {name} failed (exit {code}); log {log_path}:\n{tail}")
        logger.info("step %-16s done in %.0f s", name, self.timings[name])

    # -- the recommendation half -----------------------------------------------------------
    def recommendation(self) -> dict:
        p = self.paths
        movielens = os.path.join(self.data_dir, "movielens", "ml-latest-small")
        self.run_step("features", [self.python, "-m", "pipelines", "features", "--input_format", "movielens",
                                   "--input", movielens, "--output_dir", p["features"], "--split", "user_time",
                                   "--runner=DirectRunner"], os.path.join(p["features"], "stats.json"))
        self.run_step("recsys_train", [self.python, "-m", "recsys_ssl", "train", "--features", p["features"],
                                       "--workdir", p["recsys"], "--preset", self.preset.recsys_preset,
                                       *_set_flags(self.preset.recsys_overrides)],
                      os.path.join(p["recsys"], "train_summary.json"))
        self.run_step("recsys_evaluate", [self.python, "-m", "recsys_ssl", "evaluate", "--workdir", p["recsys"]],
                      os.path.join(p["recsys"], "eval.json"))
        self.run_step("recsys_export", [self.python, "-m", "recsys_ssl", "export", "--workdir", p["recsys"],
                                        "--export_dir", p["exports/retrieval"], "--index", "scann", "--k", "100"],
                      os.path.join(p["exports/retrieval"], "1"))
        queries = self.serve_and_query(movielens)
        with open(os.path.join(p["recsys"], "eval.json")) as f:
            return {"eval": json.load(f), "queries": queries}

    def serve_and_query(self, movielens: str, num_users: int = 3) -> list[dict]:
        """Starts ``python -m serving`` on the retrieval export and asks it for a few users' top items."""
        import tensorflow as tf

        rest_port, grpc_port = free_port(), free_port()
        log = open(os.path.join(self.paths["logs"], "server.log"), "w")
        server = subprocess.Popen([self.python, "-m", "serving", "serve", "--model_name", "retrieval", "--model_base_path",
                                   self.paths["exports/retrieval"], "--rest_api_port", str(rest_port), "--port",
                                   str(grpc_port)], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{rest_port}/v1/models/retrieval"
        try:
            deadline = time.time() + 180
            while True:
                try:
                    status = json.load(urllib.request.urlopen(base, timeout=5))
                    if any(v["state"] == "AVAILABLE" for v in status["model_version_status"]):
                        break
                except OSError:
                    pass
                if server.poll() is not None or time.time() > deadline:
                    raise StepFailed(f"the server did not become ready; see {log.name}")
                time.sleep(0.5)
            titles = {}
            with open(os.path.join(movielens, "movies.csv"), newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    titles[row["movieId"]] = row["title"]
            from recsys_ssl import schema as fs

            history_length = fs.FeatureSchema.load(self.paths["features"]).history_length
            files = sorted(glob.glob(os.path.join(self.paths["features"], "eval-*.tfrecord.gz")))
            instances = []
            for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").take(200).as_numpy_iterator():
                feature = tf.train.Example.FromString(raw).features.feature
                user = feature[fs.USER_ID].bytes_list.value[0].decode()
                if user in {i[fs.USER_ID] for i in instances}:
                    continue
                history = [h.decode() for h in feature[fs.HISTORY].bytes_list.value]
                instances.append({fs.USER_ID: user, fs.HISTORY: history + [""] * (history_length - len(history))})
                if len(instances) == num_users:
                    break
            request = urllib.request.Request(f"{base}:predict", data=json.dumps({"instances": instances}).encode(),
                                             headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            predictions = json.load(urllib.request.urlopen(request, timeout=30))["predictions"]
            latency_ms = (time.perf_counter() - started) * 1000
            results = []
            for instance, prediction in zip(instances, predictions):
                history = [titles.get(i, i) for i in instance[fs.HISTORY] if i][-3:]
                top = [titles.get(i, i) for i in prediction["item_ids"][:5]]
                results.append({"user_id": instance[fs.USER_ID], "recent_history": history, "top5": top})
            logger.info("REST :predict for %d users answered in %.0f ms", len(instances), latency_ms)
            return results
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()

    # -- the text half ---------------------------------------------------------------------
    def text_ood(self) -> dict:
        p = self.paths
        corpus = self.pretraining_corpus()
        preset = self.preset.text_preset
        self.run_step("text_pretrain", [self.python, "-m", "text_ood", "pretrain", "--corpus", ",".join(corpus),
                                        "--workdir", p["text_pretrain"], "--dataset", "clinc150", "--data_dir",
                                        self.data_dir, "--preset", preset, *_set_flags(self.preset.pretrain_overrides)],
                      os.path.join(p["text_pretrain"], "pretrain", "done.json"))
        detectors, encoder_flags = "teacher,scratch,mlkd", []
        if self.preset.encoder:  # the sentence-encoder k-NN (and hybrids with it) become candidates
            detectors += ",knn"
            encoder_flags = ["--encoder", os.path.join(self.data_dir, "models", "all-MiniLM-L6-v2")]
        self.run_step("text_train", [self.python, "-m", "text_ood", "train", "--dataset", "clinc150", "--data_dir",
                                     self.data_dir, "--workdir", p["text_train"], "--teacher", p["text_pretrain"],
                                     *encoder_flags, "--preset", preset, "--detectors", detectors,
                                     *_set_flags(self.preset.train_overrides)],
                      os.path.join(p["text_train"], "detectors", detectors.rsplit(",", 1)[-1], "detector.json"))
        # The detector to deploy, chosen without OoD data; `export` exports it by default.
        self.run_step("text_select", [self.python, "-m", "text_ood", "select", "--workdir", p["text_train"],
                                      *self.preset.select_flags], os.path.join(p["text_train"], "selection.json"))
        self.run_step("text_evaluate", [self.python, "-m", "text_ood", "evaluate", "--workdir", p["text_train"]],
                      os.path.join(p["text_train"], "eval.json"))
        self.run_step("text_export", [self.python, "-m", "text_ood", "export", "--workdir", p["text_train"],
                                      "--export_dir", p["exports/ood"]], os.path.join(p["exports/ood"], "1"))
        test_file = self.clinc_test_file()
        self.run_step("batch_scoring", [self.python, "-m", "pipelines", "batch_score", "--export_dir", p["exports/ood"],
                                        "--input", test_file, "--output_dir", p["scored"], "--runner=DirectRunner"],
                      os.path.join(p["scored"], SUMMARY_FILE))
        with open(os.path.join(p["text_train"], "eval.json")) as f:
            evaluation = json.load(f)
        with open(os.path.join(p["text_train"], "selection.json")) as f:
            selection = json.load(f)
        return {"eval": evaluation, "selection": selection, "batch": self.batch_metrics(p["scored"])}

    def pretraining_corpus(self) -> list[str]:
        from text_ood.data import default_corpus

        files = default_corpus(self.data_dir)
        lines = self.preset.corpus_lines
        if not lines:
            return files
        os.makedirs(self.paths["data"], exist_ok=True)
        subset = os.path.join(self.paths["data"], "corpus_subset.txt")
        with open(subset, "w") as out:
            for path in files[:2]:
                with open(path, encoding="utf-8") as f:
                    for index, line in enumerate(f):
                        if index >= lines:
                            break
                        out.write(line)
        return [subset]

    def clinc_test_file(self) -> str:
        """CLINC150's test split (in-scope and out-of-scope) as JSONL with the ground truth kept."""
        os.makedirs(self.paths["data"], exist_ok=True)
        path = os.path.join(self.paths["data"], "clinc150_test.jsonl")
        with open(os.path.join(self.data_dir, "text", "clinc150", "data_full.json")) as f:
            data = json.load(f)
        with open(path, "w") as out:
            for split, is_ood in (("test", False), ("oos_test", True)):
                for index, (text, intent) in enumerate(data[split]):
                    out.write(json.dumps({"id": f"{split}-{index}", "text": text, "intent": intent,
                                          "ground_truth_ood": is_ood}) + "\n")
        return path

    @staticmethod
    def batch_metrics(scored_dir: str) -> dict:
        """OoD metrics of the batch job's scores (ground truth kept in each record) and its summary."""
        import numpy as np

        from text_ood.metrics import aupr_in, aupr_out, auroc, far95

        rows = [json.loads(line) for path in glob.glob(os.path.join(scored_dir, f"{SCORES_PREFIX}-*.jsonl"))
                for line in open(path)]
        labels = np.array([r["ground_truth_ood"] for r in rows], dtype=bool)
        scores = np.array([r["ood_score"] for r in rows])
        id_scores, ood_scores = scores[~labels], scores[labels]
        summary = read_summary(scored_dir)
        return {"summary": summary, "auroc": auroc(id_scores, ood_scores), "aupr_out": aupr_out(id_scores, ood_scores),
                "aupr_in": aupr_in(id_scores, ood_scores), "far95": far95(id_scores, ood_scores),
                "flagged_ood_precision": float(labels[np.array([r["is_ood"] for r in rows])].mean())
                if any(r["is_ood"] for r in rows) else float("nan")}

    # -- summary -----------------------------------------------------------------------------
    def summary(self, recommendation: dict, text: dict, seconds: float) -> str:
        caveat = ("NOTE: smoke preset: tiny models trained for a few steps check that every step runs; the "
                  "numbers below are NOT quality figures (BENCHMARKS.md has those)." if self.preset_name == "smoke"
                  else "NOTE: short schedules (a demo of the whole system in ~20 minutes); the benchmark-quality "
                       "numbers are in BENCHMARKS.md.")
        lines = ["", "=" * 78, f"Main job ({self.preset_name} preset) finished in {seconds / 60:.1f} min", "=" * 78,
                 caveat, "", "Retrieval (MovieLens ml-latest-small, user_time split, CFM two-tower, exact recall, eval split):",
                 f"  {'slice':<8} {'examples':>9} {'R@10':>8} {'R@50':>8} {'R@100':>8}"]
        for name, metrics in recommendation["eval"]["metrics"].items():
            lines.append(f"  {name:<8} {metrics['examples']:>9} {metrics['recall@10']:>8.4f} "
                         f"{metrics['recall@50']:>8.4f} {metrics['recall@100']:>8.4f}")
        lines += ["", "Served top-5 (ScaNN export behind the REST API) for a few eval users:"]
        for query in recommendation["queries"]:
            lines.append(f"  user {query['user_id']}: after {query['recent_history']}")
            lines.append(f"      -> {query['top5']}")
        lines += ["", "Text OoD (CLINC150 test: 4,500 in-scope + 1,000 out-of-scope; OoD = positive):",
                  f"  {'detector':<22} {'AUROC':>7} {'AUPR-OUT':>9} {'AUPR-IN':>8} {'FAR95':>7}"]
        for name, metrics in _detector_rows(text["eval"]):
            label = f"{name} (deploy this)" if name == "selected" else name
            lines.append(f"  {label:<22} {100 * metrics['auroc']:>7.2f} {100 * metrics['aupr_out']:>9.2f} "
                         f"{100 * metrics['aupr_in']:>8.2f} {100 * metrics['far95']:>7.2f}")
        gate = text["eval"].get("teacher_gate")
        if gate:
            lines.append(f"  {gate['message']}")
        chosen = text["selection"]["selected"]
        lines.append(f"  selected without OoD data: {chosen['label']} (AUROC {100 * chosen['proxy_auroc']:.2f} "
                     f"on ID validation vs {text['selection']['proxy']['texts']} proxy outliers; "
                     f"{len(text['selection']['candidates'])} candidates, text_train/selection.png)")
        batch = text["batch"]
        lines.append(f"  {'selected via batch job':<22} {100 * batch['auroc']:>7.2f} {100 * batch['aupr_out']:>9.2f} "
                     f"{100 * batch['aupr_in']:>8.2f} {100 * batch['far95']:>7.2f}")
        s = batch["summary"]
        lines += [f"  batch job: read {s['read']} = scored {s['scored']} + rejected {s['rejected']}; flagged OoD "
                  f"{s['flagged_ood']} at threshold {s['threshold']:.3f} (precision "
                  f"{batch['flagged_ood_precision']:.2f})", "", "Artefacts:"]
        for label, path in (("features", "features"), ("retrieval workdir (eval.json, *.png)", "recsys"),
                            ("retrieval export (ScaNN)", "exports/retrieval"),
                            ("text workdir (eval.json, roc.png)", "text_train"), ("OoD export", "exports/ood"),
                            ("batch scores", "scored"), ("logs", "logs")):
            lines.append(f"  {label:<38} {self.paths[path]}")
        lines.append("  plots: " + ", ".join(sorted(glob.glob(os.path.join(self.workdir, "*", "*.png")))))
        lines.append("  step times (s): " + json.dumps({k: round(v) for k, v in self.timings.items()}))
        return "\n".join(lines)


def _detector_rows(evaluation: dict):
    detectors = evaluation.get("detectors", evaluation)
    for name, entry in detectors.items():
        metrics = entry.get("metrics", entry) if isinstance(entry, dict) else None
        if isinstance(metrics, dict) and "auroc" in metrics:
            yield name, metrics


def _set_flags(overrides) -> list[str]:
    return [flag for override in overrides for flag in ("--set", override)]


@dataclasses.dataclass(frozen=True)
class MainJobOptions:
    """``python -m pipelines main_job``: the whole system end to end."""

    workdir: str = cli.flag("where every step writes (a re-run skips finished steps)", default="runs/main",
                            metavar="DIR")
    data_dir: str | None = cli.data_dir_flag()
    preset: str = cli.preset_flag(sorted(MAIN_JOB_PRESETS), "default")


def command(options: MainJobOptions) -> int:
    """Runs every step, then prints and writes the summary (``WORKDIR/summary.txt``)."""
    data_dir = cli.resolve_data_dir(options.data_dir)
    if not os.path.isdir(os.path.join(data_dir, "movielens")):
        raise cli.UsageError(f"no data under {data_dir}: the data root needs movielens/ and text/; "
                             "`python -m pipelines download --datasets movielens,clinc150 --data_dir DIR` fetches them")
    job = MainJob(options.workdir, data_dir, options.preset)
    started = time.time()
    try:
        recommendation = job.recommendation()
        text = job.text_ood()
    except StepFailed as error:
        raise cli.JobError(str(error)) from None
    report = job.summary(recommendation, text, time.time() - started)
    with open(os.path.join(job.workdir, "summary.txt"), "w") as f:
        f.write(report + "\n")
    print(report)
    return 0


COMMAND = cli.Command("main_job", MainJobOptions, command,
                      help="the whole system end to end on the bundled defaults, with a printed summary",
                      description=__doc__, renamed={"--schedule": "--preset"})
