"""Process environment shared by every package: Keras selection and the data root.

The project uses one Keras: Keras 2 through ``tf-keras`` (tensorflow-recommenders and the
transformers TF classes require it). TensorFlow decides which Keras ``tf.keras`` means when it is
first imported, from the ``TF_USE_LEGACY_KERAS`` environment variable, so the variable has to be
set before anything imports TensorFlow. ``core`` sits at the bottom of the import graph (every
other package imports it), so each package's ``__init__`` calls :func:`ensure_legacy_keras` from
here.
"""

from __future__ import annotations

import os
import sys


class KerasVersionError(ImportError):
    """Raised when Keras 3 was loaded as ``tf.keras`` before this project could select Keras 2."""


def ensure_legacy_keras() -> None:
    """Selects Keras 2 (tf-keras) for ``tf.keras``; fails clearly if Keras 3 is already in use.

    Sets ``TF_USE_LEGACY_KERAS=1`` when unset and quiets TensorFlow's C++ info logs. If TensorFlow
    was imported earlier without the variable, ``tf.keras`` is already bound to Keras 3 and
    nothing can change that inside this process.

    Raises:
      KerasVersionError: ``TF_USE_LEGACY_KERAS`` is set to a false value, or TensorFlow was
        imported before this package and its ``tf.keras`` is not tf-keras.
    """
    value = os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if value.strip().lower() not in ("1", "true", "yes"):
        raise KerasVersionError(
            f"TF_USE_LEGACY_KERAS={value!r}: this project needs Keras 2 (tf-keras) because "
            "tensorflow-recommenders and the transformers TF classes require it. "
            "Unset the variable or set TF_USE_LEGACY_KERAS=1."
        )
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    keras_module = getattr(tf.keras, "__name__", "")
    if not keras_module.startswith("tf_keras"):
        raise KerasVersionError(
            "TensorFlow was imported with Keras 3 as tf.keras (received tf.keras = "
            f"{keras_module!r}); this project needs Keras 2 (tf-keras). Set TF_USE_LEGACY_KERAS=1 "
            "in the environment, or import this project's packages before tensorflow."
        )


DATA_DIR_ENV = "SSL_DATA_DIR"


def data_root(explicit: str | None = None) -> str | None:
    """Returns the data root: ``explicit`` if given, else ``$SSL_DATA_DIR``, else None.

    Data sets come from outside the project (``../shared/data`` here); the project never bundles
    them. Commands take a ``--data_dir`` flag whose default is this root.
    """
    if explicit:
        return explicit
    return os.environ.get(DATA_DIR_ENV) or None
