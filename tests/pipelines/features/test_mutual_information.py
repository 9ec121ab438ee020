"""MI between item features (``pipelines/features/mutual_information.py``)."""

from __future__ import annotations

import math

import numpy as np

import pytest

from pipelines.features import mutual_information as mi_lib
from pipelines.features.corpus_statistics import joint_table

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


def test_mutual_information_hand_computed():
    # Two single-valued features over 4 items: x = (a, a, b, b), y = (c, c, d, e).
    # P(a,c)=1/2, P(b,d)=1/4, P(b,e)=1/4; P(a)=P(b)=1/2; P(c)=1/2, P(d)=P(e)=1/4.
    # MI = 1/2 log(1/2 / (1/2*1/2)) + 2 * 1/4 log(1/4 / (1/2*1/4)) = log 2.
    joint = {("a", "c"): 2.0, ("b", "d"): 1.0, ("b", "e"): 1.0}
    mi, h_x, h_y = mi_lib.joint_statistics(joint)
    assert mi == pytest.approx(math.log(2))
    assert h_x == pytest.approx(math.log(2))
    assert h_y == pytest.approx(1.5 * math.log(2))  # -(1/2 log 1/2 + 2 * 1/4 log 1/4)
    # Multivalent: an item with x=(a) and y=(c, d) adds 1/2 to (a,c) and (a,d).
    assert joint_table([("a",), ("b",), ()], [("c", "d"), ("c",), ("c",)]) == (
        {("a", "c"): 0.5, ("a", "d"): 0.5, ("b", "c"): 1.0}, 2)
    # Independent features have zero MI.
    assert mi_lib.joint_statistics({("a", "c"): 1, ("a", "d"): 1, ("b", "c"): 1, ("b", "d"): 1})[0] == pytest.approx(0)


def test_the_vectorised_estimator_equals_the_pipelines():
    """The synthetic generators check their output with ``coded_mutual_information``: same definition."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 500), rng.integers(0, 3, 500)
    y = np.where(rng.random(500) < 0.6, x % 3, y)  # dependent
    weight = rng.choice([1.0, 0.5, 0.25], 500)
    joint = {}
    for a, b, w in zip(x, y, weight):
        joint[(str(a), str(b))] = joint.get((str(a), str(b)), 0.0) + w
    expected, _, _ = mi_lib.joint_statistics(joint)
    assert mi_lib.coded_mutual_information(x, y, weight) == pytest.approx(expected, abs=1e-12)
    assert mi_lib.coded_mutual_information(x, x * 0, np.ones(500)) == pytest.approx(0.0, abs=1e-12)
