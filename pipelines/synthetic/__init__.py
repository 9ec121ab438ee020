"""Synthetic recommendation data in the feature pipeline's generic input format (two regimes).

- :mod:`pipelines.synthetic.groups`: users prefer topics, subcategories or brands
  (``python -m pipelines synthetic``);
- :mod:`pipelines.synthetic.long_tail`: the positive control for SSL, preferences over
  coarse-to-fine item features, a long tail and cold items (``python -m pipelines synthetic_long_tail``);
- :mod:`pipelines.synthetic.output`: writing either regime's tables atomically (CSV/JSONL or Parquet),
  with ``input_schema.json`` and ``generation.json``;
- :mod:`pipelines.synthetic.distributions`: what the regimes share (Zipf shares, languages,
  session timestamps).
"""
