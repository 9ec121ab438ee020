"""The detector ``python -m text_ood select`` chose: rebuilt from ``WORKDIR/selection.json``.

``select`` (:mod:`text_ood.selection`) saves its choice as ``WORKDIR/detectors/selected/`` and
records in ``selection.json`` the candidate, its encoder config and, for a hybrid, every
component's own encoder config. The registry name :data:`SELECTED` builds the (unfitted) detector
from that record; ``restore`` then loads its fitted state. This module takes the registry's
``create`` function as an argument instead of importing the registry (which registers it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

from core.config import from_dict
from text_ood.config import EncoderConfig
from text_ood.detectors.base import OODDetector, RequiresFittingError
from text_ood.detectors.hybrid import HybridDetector

SELECTED = "selected"  # the registry name (never trained by `train`)
SELECTION_FILE = "selection.json"


def read_selection(workdir: str) -> dict:
    """``WORKDIR/selection.json``.

    Raises:
      RequiresFittingError: ``select`` has not run in this workdir.
    """
    path = os.path.join(workdir, SELECTION_FILE)
    if not os.path.isfile(path):
        raise RequiresFittingError(f"no detector selected in {workdir} (no {SELECTION_FILE}); run "
                                   f"`python -m text_ood select --workdir {workdir}` first")
    with open(path) as f:
        return json.load(f)


def selected_detector(ctx, create: Callable[[str, object], OODDetector]) -> OODDetector:
    """The (unfitted) detector ``select`` chose, named :data:`SELECTED`; restore it from its directory.

    Args:
      ctx: the workdir's training context.
      create: the registry's ``create_detector(name, ctx)``.
    """
    def configured(encoder_config: dict):
        encoder = from_dict(EncoderConfig, encoder_config)
        return dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, encoder=encoder))

    chosen = read_selection(ctx.workdir)["selected"]
    local = configured(chosen["encoder_config"])
    components = chosen.get("component_encoder_configs")
    if components:  # a hybrid whose components have their own settings
        detector = HybridDetector(SELECTED, local, [create(name, configured(config))
                                                    for name, config in components.items()])
    else:
        detector = create(chosen["detector"], local)
    detector.name = SELECTED
    return detector
