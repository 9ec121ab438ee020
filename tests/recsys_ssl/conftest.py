"""A small feature directory made by the real synthetic generator and feature pipeline."""

from __future__ import annotations

import pytest

from pipelines import recsys_features
from pipelines.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="session")
def features_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("recsys")
    generate(SyntheticConfig(output_dir=str(root / "raw"), num_users=80, num_items=60, num_interactions=2_400,
                             seed=3, num_topics=4, num_categories=3, num_tags=20, tags_per_topic=5))
    out = str(root / "features")
    assert recsys_features.main([
        "--input_format", "interactions", "--data_dir", str(root / "raw"), "--output_dir", out,
        "--split", "user_time", "--history_length", "5", "--runner=DirectRunner",
    ]) == 0
    return out
