"""``python -m pipelines <command>``: the Beam jobs, the data generators, downloads and the main job.

Commands (each has ``--help``; Beam jobs also take standard Beam pipeline options, e.g.
``--runner=DataflowRunner --project ... --region ... --temp_location gs://...``):

  features             interaction logs -> training examples, item corpus, vocabularies, MI, stats
  batch_score          score texts with an exported OoD detector (Beam RunInference)
  synthetic            synthetic recommendation data, "groups" regime
  synthetic_long_tail  synthetic recommendation data, the long-tail positive control
  download             fetch MovieLens / CLINC150 from their official sources (SHA-256 verified)
  main_job             the whole system end to end on the bundled defaults

Presets (main-job schedules, benchmark data sets, with their commands and costs):
``pipelines/presets.py``.
"""

from __future__ import annotations

import logging
import sys

from core import cli

logger = logging.getLogger("pipelines")


def _synthetic(config) -> int:
    from pipelines.synthetic import groups

    files = groups.generate(config)
    logger.info("input schema: %s", files.schema)
    return 0


def _synthetic_long_tail(config) -> int:
    from pipelines.synthetic import long_tail

    files = long_tail.generate(config)
    logger.info("input schema: %s", files.schema)
    return 0


def commands() -> tuple[cli.Command, ...]:
    """Every command of the package (importing a job's module only here, where it is needed)."""
    from pipelines import download, main_job
    from pipelines.features import job as features_job
    from pipelines.scoring import batch_ood_scoring
    from pipelines.synthetic.groups import SyntheticConfig
    from pipelines.synthetic.long_tail import LongTailConfig

    regime = "`python -m pipelines synthetic_long_tail` (was --regime long_tail_features)"
    return (
        features_job.COMMAND,
        batch_ood_scoring.COMMAND,
        cli.Command("synthetic", SyntheticConfig, _synthetic,
                    help='synthetic interactions and items, "groups" regime (users prefer topics/subcategories/brands)',
                    description=sys.modules["pipelines.synthetic.groups"].__doc__,
                    renamed={"--regime": regime, "--no-with_weights": "--with_weights=false",
                             "--no-overwrite": "--overwrite=false"}),
        cli.Command("synthetic_long_tail", LongTailConfig, _synthetic_long_tail,
                    help="synthetic interactions and items: the long-tail positive control for SSL",
                    description=sys.modules["pipelines.synthetic.long_tail"].__doc__,
                    renamed={"--regime": regime, "--no-with_weights": "--with_weights=false",
                             "--no-overwrite": "--overwrite=false"}),
        download.COMMAND,
        main_job.COMMAND,
    )


RENAMED_COMMANDS = {"recsys_features": "features", "batch_ood_scoring": "batch_score"}


def main(argv: list[str] | None = None) -> int:
    return cli.run_commands("python -m pipelines", __doc__, commands(), argv, RENAMED_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
