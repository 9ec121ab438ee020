"""``python -m recsys_ssl tune``: choose training knobs on the **validation** split, a user can re-run it.

Coordinate search: start from the preset (plus ``--set`` overrides), evaluate it, then for each
``--grid key=v1,v2,...`` in turn try every value with the other knobs at their current best and
keep the best value (validation recall@100 overall of the best epoch; ties keep the earlier
value); ``--rounds`` repeats the pass. Every run is ``train`` + ``evaluate --split validation``
(``recsys_ssl.ablation.run_one``) in ``OUT/runs/<id>/``, where ``<id>`` is a hash of the resolved
config, so a configuration reached twice is trained once and an interrupted search resumes.
The eval split is never read.

Writes ``OUT/tune.json`` (every run: its overrides and validation metrics; the chosen overrides)
and ``OUT/tune.md``; ``--peers`` also tunes the peers (``recsys_ssl.baselines``) on validation with
at least the same number of evaluations for EASE's lambda and item-kNN's neighbourhood size (the
same budget), in ``OUT/peers/``.

Example::

  python -m recsys_ssl tune --features runs/features --output_dir runs/tune --preset movielens --set ssl.method=none \\
      --grid train.logq_strength=1,0.5,0 --grid train.temperature=0.05,0.1,0.2 --grid train.mns_negatives=0,256
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

from core import config as dataclass_config
from core.files import write_json_atomic
from recsys_ssl import config as config_lib

logger = logging.getLogger(__name__)

SELECTION = ("overall", "recall@100")


def parse_grids(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``key=v1,v2`` specs -> [(key, [v1, v2])], checked against the config (unknown keys, bad values).

    Raises:
      ValueError: a malformed spec, a repeated key, or a value the config rejects.
    """
    grids, seen = [], set()
    for spec in specs:
        key, separator, values = spec.partition("=")
        values = [v.strip() for v in values.split(",") if v.strip()]
        if not separator or not key or not values:
            raise ValueError(f"--grid must look like key=v1,v2[,...], received {spec!r}")
        if key in seen:
            raise ValueError(f"--grid {key} given twice")
        seen.add(key)
        base = config_lib.tiny()
        for value in values:
            dataclass_config.apply_overrides(base, [f"{key}={value}"])  # raises on unknown keys / bad values
        grids.append((key, values))
    return grids


def run_id(config: config_lib.Config) -> str:
    """A short stable id of a resolved config (the same knobs reached twice share one run)."""
    text = json.dumps(dataclass_config.to_dict(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _selection(metrics: dict) -> float:
    return metrics[SELECTION[0]][SELECTION[1]]


def tune(features: str, out: str, preset: str, overrides: Sequence[str], grids: Sequence[tuple[str, list[str]]],
         rounds: int = 1) -> dict:
    """Runs the coordinate search (see the module docstring); returns (and writes) its document."""
    from recsys_ssl.ablation import run_one

    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, received {rounds}")
    base = dataclass_config.apply_overrides(config_lib.preset(preset), overrides)
    document = {"features": os.path.abspath(features), "preset": preset, "overrides": list(overrides),
                "grids": [[k, v] for k, v in grids], "rounds": rounds, "selection": "validation " + " ".join(SELECTION),
                "runs": {}, "steps": []}
    chosen: dict[str, str] = {}

    def evaluate(choice: dict[str, str]) -> float:
        extra = [f"{k}={v}" for k, v in choice.items()]
        config = dataclass_config.apply_overrides(base, extra)
        identifier = run_id(config)
        if identifier not in document["runs"]:
            workdir = os.path.join(out, "runs", identifier)
            result = run_one(features, workdir, preset, list(overrides) + extra, "validation")
            document["runs"][identifier] = {"overrides": extra, "workdir": workdir, "metrics": result["metrics"],
                                            "train_seconds": result.get("train_seconds")}
            _write(document, out)
            logger.info("tune %s %s: validation R@100 %.4f", identifier, extra or "(preset)", _selection(result["metrics"]))
        return _selection(document["runs"][identifier]["metrics"])

    best = evaluate(chosen)
    for round_index in range(rounds):
        for key, values in grids:
            scores = [(evaluate({**chosen, key: value}), -index, value) for index, value in enumerate(values)]
            score, _, value = max(scores)
            if score > best:  # otherwise the current value (maybe the preset's) stays
                chosen[key], best = value, score
            document["steps"].append({"round": round_index, "key": key, "tried": {v: s for s, _, v in scores},
                                      "chosen": chosen.get(key), "best": best})
            _write(document, out)
    document["chosen_overrides"] = [f"{k}={v}" for k, v in chosen.items()]
    document["best_validation_recall@100"] = best
    _write(document, out)
    return document


def peer_grids(budget: int) -> tuple[list[float], list[int]]:
    """EASE lambdas and item-kNN neighbourhood sizes, ``budget`` values each (at least 4): lambdas on
    the half-decade grid 10^(k/2) starting at 3.16, neighbourhood sizes log-spaced from 5 to 2,000."""
    import numpy as np

    budget = max(4, budget)
    lambdas = [float(f"{10 ** (0.5 + k / 2):.3g}") for k in range(budget)]
    neighbours = sorted({int(round(v)) for v in np.geomspace(5, 2000, budget)})
    return lambdas, neighbours


def tune_peers(features: str, out: str, budget: int, query_mode: str) -> dict:
    """The peers tuned on validation with ``budget`` evaluations for EASE and item-kNN (``OUT/peers``)."""
    from recsys_ssl.baselines import run_baselines

    lambdas, neighbours = peer_grids(budget)
    return run_baselines(features, os.path.join(out, "peers"), mode=query_mode, ease_lambdas=lambdas,
                         knn_neighbours=neighbours)


def _write(document: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "tune.json"), document)
    with open(os.path.join(out, "tune.md"), "w") as f:
        f.write(markdown(document))


def markdown(document: dict) -> str:
    """Every run's validation recall and the chosen overrides."""
    lines = [f"Tuning on the validation split of `{document['features']}`, preset `{document['preset']}`, "
             f"base overrides {document['overrides'] or 'none'}; selection: {document['selection']}.", "",
             "| run | overrides | overall R@100 | head R@100 | tail R@100 | cold R@100 | train s |",
             "|---|---|---|---|---|---|---|"]
    for identifier, run in document["runs"].items():
        metrics = run["metrics"]
        cells = [f"{metrics[s]['recall@100']:.4f}" if metrics.get(s, {}).get("examples") else "n/a"
                 for s in ("overall", "head", "tail", "cold")]
        seconds = run.get("train_seconds")
        lines.append(f"| {identifier} | {', '.join(run['overrides']) or '(preset)'} | " + " | ".join(cells)
                     + f" | {'-' if seconds is None else f'{seconds:.0f}'} |")
    if "chosen_overrides" in document:
        lines += ["", f"Chosen (validation R@100 {document['best_validation_recall@100']:.4f}): "
                      f"`{' '.join('--set ' + o for o in document['chosen_overrides']) or '(the preset)'}`"]
    return "\n".join(lines) + "\n"
