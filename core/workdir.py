"""The one workdir format of both halves: ``config.json`` (the resolved config) and ``run.json``.

Every training command writes its workdir the same way:

- ``config.json``: the resolved config (:func:`core.config.to_dict` of the run's frozen dataclass),
  written atomically. A workdir keeps the config it was created with: re-running it (to resume)
  with settings that differ in the sections its artefacts depend on is refused, with the differing
  keys in the message. The comparison is tolerant: both sides go through the dataclass first, so
  fields added since the workdir was created take their defaults (the values the old code used)
  and keys retired since (``retired``) are dropped; neither counts as a change.
- ``run.json``: what the run was given and what it recorded (input locations, sources, results
  such as the teacher gate), updated atomically with :func:`update_run`; ``created`` and
  ``updated`` times are kept.

Earlier recsys workdirs kept ``{"config": ..., "features_dir": ...}`` in ``config.json``;
:func:`read_config` reads both layouts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from core.config import from_dict, to_dict
from core.files import write_json_atomic

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _document(path: str) -> dict:
    with open(path) as f:
        document = json.load(f)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object, received {type(document).__name__}")
    return document


def config_values(document: Mapping[str, Any], retired: Sequence[str] = ()) -> dict:
    """The config part of a ``config.json`` document (either layout), without retired keys."""
    values = dict(document["config"]) if "config" in document and "features_dir" in document else dict(document)
    for key in retired:
        section, _, field = key.rpartition(".")
        node = values
        for part in [p for p in section.split(".") if p]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(field, None)
    return values


def read_config(workdir: str, cls: type[T], retired: Sequence[str] = (),
                migrate=None) -> T:
    """The config a workdir was created with, as ``cls``.

    Args:
      cls: the run's config dataclass.
      retired: dotted keys removed from the config since (dropped when read).
      migrate: ``migrate(values) -> values``, for renamed keys (applied before the dataclass).

    Raises:
      FileNotFoundError: no ``config.json`` (the message says which command makes one).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE}: train into this --workdir first")
    values = config_values(_document(path), retired)
    return from_dict(cls, migrate(values) if migrate else values)


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def write_config(workdir: str, config: Any, sections: Sequence[str] | None = None, retired: Sequence[str] = (),
                 migrate=None, write: bool = True) -> None:
    """Writes (and logs) the resolved config; refuses to resume a workdir with different settings.

    Args:
      config: the run's frozen config dataclass.
      sections: the top-level config keys this workdir's artefacts depend on (None: all); other
        sections may differ when resuming (e.g. ``student`` for a pre-training workdir).
      retired / migrate: see :func:`read_config`.
      write: False on non-chief workers of a distributed run (they only check).

    Raises:
      ValueError: ``workdir`` holds a config that differs in ``sections``; the message lists the
        differing keys with their old and new values.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    new_values = to_dict(config)
    if os.path.isfile(path):
        old_values = to_dict(read_config(workdir, type(config), retired, migrate))
        keys = sections if sections is not None else list(new_values)
        existing = _flatten({k: old_values.get(k) for k in keys})
        new = _flatten({k: new_values.get(k) for k in keys})
        changed = sorted(k for k in set(existing) | set(new) if existing.get(k) != new.get(k))
        if changed:
            raise ValueError(
                f"{workdir} was created with a different config ({', '.join(changed[:8])} differ: "
                f"{[(k, existing.get(k), new.get(k)) for k in changed[:3]]}); use a new --workdir "
                "or the original settings to resume")
    if write:
        write_json_atomic(path, new_values, indent=2)
    logger.info("config: %s", json.dumps(new_values, sort_keys=True))


def read_run(workdir: str) -> dict:
    """``run.json`` of a workdir ({} when there is none yet)."""
    path = os.path.join(workdir, RUN_FILE)
    return _document(path) if os.path.isfile(path) else {}


def update_run(workdir: str, **fields: Any) -> dict:
    """Sets ``fields`` in the workdir's ``run.json`` (atomically); returns the new document."""
    os.makedirs(workdir, exist_ok=True)
    document = read_run(workdir)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document.setdefault("created", now)
    document.update(fields)
    document["updated"] = now
    write_json_atomic(os.path.join(workdir, RUN_FILE), document, indent=2, sort_keys=True)
    return document
