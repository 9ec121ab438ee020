"""Shared pytest fixtures and markers.

- The data root (skips cleanly when the real data sets are absent).
- The tiny trained models every package shares (``tests/fixtures/trained.py``), trained once per
  session.
- ``slow``: every test that trains a model (directly, or through a trained-model fixture) or runs
  a Beam pipeline end to end. ``pytest -m "not slow"`` is the inner loop (under 3 minutes on 2
  cores); CI runs everything.
"""

from __future__ import annotations

import os

import pytest

import serving  # noqa: F401  (selects Keras 2 before any test imports TensorFlow)
from core.env import DATA_DIR_ENV, data_root

pytest_plugins = ["tests.fixtures.trained"]

# Fixtures that train models or run the feature pipeline: a test using one is slow.
SLOW_FIXTURES = {"pretrain_dir", "trained_workdir", "exported_mlkd", "features_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The real data sets' root (``$SSL_DATA_DIR``); skips the test when it is not available."""
    root = data_root()
    if not root or not os.path.isdir(root):
        pytest.skip(f"real data not available: set {DATA_DIR_ENV} to the shared data directory")
    return root


@pytest.fixture(scope="session")
def movielens_dir(data_dir: str) -> str:
    path = os.path.join(data_dir, "movielens", "ml-latest-small")
    if not os.path.isfile(os.path.join(path, "ratings.csv")):
        pytest.skip(f"MovieLens ml-latest-small not found under {path}")
    return path


@pytest.fixture(scope="session")
def clinc150_dir(data_dir: str) -> str:
    path = os.path.join(data_dir, "text", "clinc150")
    if not os.path.isfile(os.path.join(path, "data_full.json")):
        pytest.skip(f"CLINC150 not found under {path}")
    return path
