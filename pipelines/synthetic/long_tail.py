"""Synthetic regime ``long_tail_features``: the paper's motivation for SSL, as a generative story.

``python -m pipelines synthetic_long_tail --output_dir DIR --num_users N
--num_items M --num_interactions K`` writes the generic input format (``input_schema.json``,
``items.jsonl``, ``interactions*.csv``, ``generation.json``), like the default regime.

This story was written down, with the prediction below, before any SSL model was trained on it
(BENCHMARKS.md repeats it). It is frozen: a changed story gets a new regime name and its own results.

Items (coarse > mid > fine features, nested and correlated):

- ``category`` (20): shares Dirichlet(2).
- ``brand`` (``brands_per_category`` per category, Zipf shares inside it): nested in the category.
- ``series`` (fine, sparse: ~``num_items / mean_series_size`` values): a product line inside a
  brand; item counts per series are geometric.
- ``tags`` (fine, multivalent, 1-4 values): every category owns a pool of ``tags_per_category``
  tags; each series has a profile of 3 tags from its category's pool (Zipf); an item keeps each
  profile tag with probability 0.8 and adds one other pool tag with probability 0.3 (at least
  one tag). So tags follow the series closely, the brand and category loosely.
- ``price_bucket`` (5): the brand's price level, moved one bucket with probability 0.3.
- ``language`` (6): independent noise.

Dependence therefore: category-brand, brand-series, series-tags strong; category-tags, brand-price
medium; language independent of everything.

Popularity and choice. Every item has a hidden id-level appeal ``q = rank^-zipf_exponent`` (a
random permutation of ranks; no feature encodes it). A user prefers 1-3 categories (weights
Dirichlet(1)); in each of them 2-4 brands (in proportion to brand shares) and 4 tags of the
category's pool. A session picks one preferred category; each interaction picks one of the user's
brands there with probability ``brand_loyalty`` (else any brand of the category by share), then
an item of that brand with probability proportional to ``q^appeal_exponent * exp(tag_affinity *
m)``, ``m`` = how many of the item's tags the user prefers. With probability ``exploration`` an
interaction is any released item by ``q``. So the features say much about who wants an item
(category, brand, and inside the brand the fine-grained tags), and id-level appeal adds what no
feature can; the power law comes from category and brand shares times appeal. Every brand has a
few high-appeal items (head) and many low-appeal ones (tail) that share its series and tags.

Cold items. ``cold_item_fraction`` of the items are new releases: each becomes available at a
time uniform between the 92nd and 96th percentile of all interaction times, so with the feature
pipeline's ``--split time --eval_fraction 0.1`` they have no training interactions and appear only
as eval targets. Their features are like everyone else's (no "new" feature).

Timestamps, sessions and 1-5 ratings follow the default regime (:mod:`pipelines.synthetic.groups`).

What CFM should do here, and why (the prediction, written before training):
the main task sees items in proportion to their interactions, so a tail item's id embedding is
trained on a handful of examples and a cold item's not at all; the tower must place them by
their features. The SSL task samples the corpus uniformly (mostly tail and cold items) and asks
the two views (item_id and some features vs the other features) to agree, which trains the id
embeddings of tail and cold items towards what their brand, series and tags say, and trains the
feature embeddings on the whole catalogue. Expected: tail and cold recall@100 of CFM above no SSL
(the issue's target: tail >= 1.10x with the interval excluding 0), overall recall not below, and
CFM >= RFM: random halves often split series from tags or brand from category, and a view can then
match its partner through that correlated pair alone (the shortcut CFM removes).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.cli import flag
from pipelines.synthetic import output
from pipelines.synthetic.distributions import LANGUAGE_PROBS, LANGUAGES, sample_timestamps, zipf
from pipelines.synthetic.output import GeneratedFiles, GeneratorSettings, ids, measure_dependence

REGIME = "long_tail_features"
ITEM_FEATURES = ("category", "brand", "series", "tags", "price_bucket", "language")
MULTIVALENT = ("tags",)
PRICE_BUCKETS = ("p0", "p1", "p2", "p3", "p4")
MAX_TAGS = 4
PROFILE_TAGS = 3
COLD_RELEASE_QUANTILES = (0.92, 0.96)


@dataclasses.dataclass(frozen=True)
class LongTailConfig(GeneratorSettings):
    """What ``python -m pipelines synthetic_long_tail`` generates. Every field is also a ``--flag``."""

    zipf_exponent: float = flag("hidden id-level appeal q = rank^-zipf_exponent", default=1.0)
    appeal_exponent: float = flag("within a brand, choice ~ q^appeal_exponent * exp(tag_affinity * m)", default=1.0)
    tag_affinity: float = flag("log-odds per preferred tag an item carries (within-brand choice)", default=1.5)
    brand_loyalty: float = flag("probability that an interaction stays with the user's brands", default=0.7)
    exploration: float = flag("probability that an interaction is any released item by appeal", default=0.05)
    cold_item_fraction: float = flag("share of items released only at the end (no training interactions)", default=0.05)
    num_categories: int = flag("categories", default=20)
    brands_per_category: int = flag("brands nested in each category", default=50)
    mean_series_size: float = flag("mean items per series (geometric sizes)", default=6.0)
    tags_per_category: int = flag("size of each category's own tag pool", default=60)

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_categories", "brands_per_category"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, received {getattr(self, name)}")
        if self.tags_per_category < PROFILE_TAGS + 1:
            raise ValueError(f"tags_per_category must be >= {PROFILE_TAGS + 1}, received {self.tags_per_category}")
        if self.mean_series_size < 1.0:
            raise ValueError(f"mean_series_size must be >= 1, received {self.mean_series_size}")
        for name in ("brand_loyalty", "exploration", "cold_item_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], received {getattr(self, name)}")
        if self.cold_item_fraction >= 0.5:
            raise ValueError(f"cold_item_fraction must be < 0.5, received {self.cold_item_fraction}")
        for name in ("zipf_exponent", "appeal_exponent", "tag_affinity"):
            if not 0.0 <= getattr(self, name) <= 5.0:
                raise ValueError(f"{name} must be in [0, 5], received {getattr(self, name)}")
        if self.num_items < self.num_categories * self.brands_per_category:
            raise ValueError(f"num_items ({self.num_items}) must be >= num_categories * brands_per_category "
                             f"({self.num_categories * self.brands_per_category}): every brand needs an item")


def sample_items(config: LongTailConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Samples the item table (see the module docstring).

    Returns:
      Integer codes [num_items] int64 unless noted: ``category``, ``brand`` (global index,
      category * brands_per_category + slot), ``series`` (global index), ``tags`` ([num_items,
      MAX_TAGS] global tag index, -1 = none, distinct, at least one), ``price_bucket``,
      ``language``; ``appeal`` (float64 q) and ``cold`` (bool).
    """
    c = config
    m, per_cat, pool = c.num_items, c.brands_per_category, c.tags_per_category
    num_brands = c.num_categories * per_cat
    category_share = rng.dirichlet(np.full(c.num_categories, 2.0))
    brand_share = (category_share[:, None] * zipf(per_cat, 1.0)[None, :]).reshape(-1)
    # Every brand gets one item; the rest are spread by brand share.
    brand = np.concatenate([np.arange(num_brands), rng.choice(num_brands, size=m - num_brands, p=brand_share)])
    brand = np.sort(brand)
    category = brand // per_cat

    # Series: consecutive runs of geometric length inside each brand.
    new_series = rng.random(m) < 1.0 / c.mean_series_size
    new_series[np.r_[True, brand[1:] != brand[:-1]]] = True
    series = np.cumsum(new_series) - 1
    num_series = int(series[-1]) + 1
    series_category = category[new_series]
    profile = rng.choice(pool, size=(num_series, PROFILE_TAGS), p=zipf(pool, 1.0))
    keep = rng.random((m, PROFILE_TAGS)) < 0.8
    extra = np.where(rng.random(m) < 0.3, rng.integers(pool, size=m), -1)
    local = np.concatenate([np.where(keep, profile[series], -1), extra[:, None]], axis=1)  # [m, 4]
    empty = (local < 0).all(axis=1)
    local[empty, 0] = profile[series[empty], 0]
    local = -np.sort(-local, axis=1)
    local[:, 1:][local[:, 1:] == local[:, :-1]] = -1  # duplicates (profile repeats) -> none
    local = -np.sort(-local, axis=1)
    tags = np.where(local >= 0, series_category[series][:, None] * pool + local, -1)

    brand_price = rng.integers(len(PRICE_BUCKETS), size=num_brands)
    shift = np.where(rng.random(m) < 0.3, rng.choice([-1, 1], size=m), 0)
    price = np.clip(brand_price[brand] + shift, 0, len(PRICE_BUCKETS) - 1)

    appeal = np.arange(1, m + 1, dtype=np.float64)[rng.permutation(m)] ** -c.zipf_exponent
    cold = np.zeros(m, dtype=bool)
    cold[rng.permutation(m)[: int(round(c.cold_item_fraction * m))]] = True
    order = rng.permutation(m)  # item ids in random order, not grouped by brand
    return {"category": category[order], "brand": brand[order], "series": series[order],
            "tags": tags[order], "price_bucket": price[order],
            "language": rng.choice(len(LANGUAGES), size=m, p=LANGUAGE_PROBS),
            "appeal": appeal, "cold": cold, "brand_share": brand_share}


def _user_preferences(config: LongTailConfig, items: dict, n: int, rng: np.random.Generator):
    """Preferred categories [n, 3] (weights [n, 3], 0 = unused), brands [n, 3, 4], tags [n, 3, 4]."""
    c = config
    category_share = np.bincount(items["category"], minlength=c.num_categories).astype(np.float64)
    keys = np.log(category_share / category_share.sum() + 1e-12)[None, :] + rng.gumbel(size=(n, c.num_categories))
    categories = np.argsort(-keys, axis=1)[:, :3]
    weights = rng.dirichlet(np.ones(3), size=n)
    weights[np.arange(3)[None, :] >= rng.integers(1, 4, size=(n, 1))] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    per_cat = c.brands_per_category
    local_share = items["brand_share"].reshape(c.num_categories, per_cat)
    local_share = local_share / local_share.sum(axis=1, keepdims=True)
    brand_keys = np.log(local_share[categories] + 1e-12) + rng.gumbel(size=(n, 3, per_cat))
    brands = categories[:, :, None] * per_cat + np.argsort(-brand_keys, axis=2)[:, :, :4]
    num_brands = rng.integers(2, 5, size=(n, 3))
    brands = np.where(np.arange(4)[None, None, :] < num_brands[:, :, None], brands, -1)
    pool = c.tags_per_category
    tag_keys = np.log(zipf(pool, 1.0))[None, None, :] + rng.gumbel(size=(n, 3, pool))
    tags = categories[:, :, None] * pool + np.argsort(-tag_keys, axis=2)[:, :, :4]
    return categories, weights, brands, tags


def sample_interactions(config: LongTailConfig, items: dict[str, np.ndarray],
                        rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Samples sessions and interactions (see the module docstring).

    Returns:
      ``user``, ``item``, ``timestamp``, ``weight``: [num_interactions] int64, sorted by
      (timestamp, user); ``cold_release`` float: the release time of cold items.
    """
    c = config
    n, k, m = c.num_users, c.num_interactions, c.num_items
    activity = rng.lognormal(0.0, 1.0, size=n)
    counts = 1 + rng.multinomial(k - n, activity / activity.sum())
    user = np.repeat(np.arange(n), counts)
    user_start = np.cumsum(counts) - counts
    starts_session = rng.random(k) < c.session_break_probability
    starts_session[user_start] = True
    session = np.cumsum(starts_session) - 1
    timestamp = sample_timestamps(user, user_start, counts, starts_session, c.start_timestamp,
                                  c.end_timestamp, rng)

    categories, weights, brands, user_tags = _user_preferences(c, items, n, rng)
    session_user = user[starts_session]
    slot_cumulative = np.cumsum(weights[session_user], axis=1)
    slot = np.minimum((rng.random((len(session_user), 1)) * slot_cumulative[:, -1:] >= slot_cumulative).sum(axis=1), 2)
    slot_of = slot[session]  # [k] the session's category slot
    category_of = categories[user, slot_of]

    # Brand: one of the user's brands there (loyal) or any brand of the category by share.
    user_brands = brands[user, slot_of]  # [k, 4], -1 = unused
    valid = (user_brands >= 0).sum(axis=1)
    pick = np.floor(rng.random(k) * valid).astype(np.int64)
    loyal_brand = user_brands[np.arange(k), pick]
    per_cat = c.brands_per_category
    local_share = items["brand_share"].reshape(c.num_categories, per_cat)
    local_cumulative = np.cumsum(local_share / local_share.sum(axis=1, keepdims=True), axis=1)
    draw = rng.random((k, 1))
    any_brand = category_of * per_cat + np.minimum((draw >= local_cumulative[category_of]).sum(axis=1), per_cat - 1)
    brand_of = np.where(rng.random(k) < c.brand_loyalty, loyal_brand, any_brand)

    # Cold items become available between two late quantiles of all interaction times.
    low, high = np.quantile(timestamp, COLD_RELEASE_QUANTILES)
    release = np.where(items["cold"], low + rng.random(m) * (high - low), -np.inf)

    # Item inside the brand: Gumbel-max over q^a * exp(affinity * matched tags), released only.
    log_appeal = c.appeal_exponent * np.log(items["appeal"])
    item = np.empty(k, dtype=np.int64)
    order = np.argsort(brand_of, kind="stable")
    bounds = np.searchsorted(brand_of[order], np.arange(c.num_categories * per_cat + 1))
    items_by_brand = np.argsort(items["brand"], kind="stable")
    item_bounds = np.searchsorted(items["brand"][items_by_brand], np.arange(c.num_categories * per_cat + 1))
    num_tags = c.num_categories * c.tags_per_category
    for b in range(c.num_categories * per_cat):
        chosen = order[bounds[b]:bounds[b + 1]]
        if len(chosen) == 0:
            continue
        candidates = items_by_brand[item_bounds[b]:item_bounds[b + 1]]
        item_tag_matrix = np.zeros((len(candidates), num_tags), dtype=np.float32)
        tag_rows, tag_slots = np.nonzero(items["tags"][candidates] >= 0)
        item_tag_matrix[tag_rows, items["tags"][candidates][tag_rows, tag_slots]] = 1.0
        liked = user_tags[user[chosen], slot_of[chosen]]  # [n_b, 4]
        user_tag_matrix = np.zeros((len(chosen), num_tags), dtype=np.float32)
        user_tag_matrix[np.repeat(np.arange(len(chosen)), liked.shape[1]), liked.reshape(-1)] = 1.0
        matched = user_tag_matrix @ item_tag_matrix.T  # [n_b, candidates]
        score = log_appeal[candidates][None, :] + c.tag_affinity * matched
        score = np.where(release[candidates][None, :] <= timestamp[chosen][:, None], score, -np.inf)
        score = score + rng.gumbel(size=score.shape)
        best = np.argmax(score, axis=1)
        fallback = ~np.isfinite(score.max(axis=1))  # every item of the brand unreleased
        best[fallback] = 0
        item[chosen] = candidates[best]
        item[chosen[fallback]] = -1

    released_cumulative = np.cumsum(np.where(items["cold"], 0.0, items["appeal"]))
    explore = (rng.random(k) < c.exploration) | (item < 0)
    item[explore] = np.minimum(np.searchsorted(released_cumulative, rng.random(int(explore.sum())) *
                                               released_cumulative[-1], side="right"), m - 1)

    matched_any = (items["tags"][item][:, :, None] == user_tags[user, slot_of][:, None, :]).any(axis=(1, 2))
    quality = rng.normal(0.0, 0.5, size=m)
    rating = 3.0 + 0.8 * matched_any + quality[item] + rng.normal(0.0, 0.9, size=k)
    order = np.argsort(timestamp, kind="stable")
    return {"user": user[order], "item": item[order], "timestamp": timestamp[order],
            "weight": np.clip(np.rint(rating), 1, 5).astype(np.int64)[order],
            "cold_release": (float(low), float(high))}


def _item_rows(config: LongTailConfig, items: dict[str, np.ndarray], item_ids: list[str]):
    brands = ids("brand", config.num_categories * config.brands_per_category, 4)
    series_names = ids("series", int(items["series"].max()) + 1, 5)
    tag_names = ids("tag", config.num_categories * config.tags_per_category, 4)
    cat_width = len(str(config.num_categories - 1))
    columns = zip(item_ids, items["category"].tolist(), items["brand"].tolist(), items["series"].tolist(),
                  items["tags"].tolist(), items["price_bucket"].tolist(), items["language"].tolist())
    for item_id, category, brand, series, tags, price, language in columns:
        yield {
            "item_id": item_id, "category": f"cat{category:0{cat_width}d}", "brand": brands[brand],
            "series": series_names[series], "tags": [tag_names[t] for t in tags if t >= 0],
            "price_bucket": PRICE_BUCKETS[price], "language": LANGUAGES[language],
        }


def _stats(config: LongTailConfig, items: dict[str, np.ndarray], inter: dict[str, np.ndarray]) -> dict:
    per_item = np.bincount(inter["item"], minlength=config.num_items)
    top = np.sort(per_item)[::-1][: max(1, config.num_items // 5)]
    low, high = inter["cold_release"]
    before_release = inter["timestamp"] < low
    return {
        "num_users": config.num_users, "num_items": config.num_items, "num_interactions": int(len(inter["item"])),
        "items_with_interactions": int((per_item > 0).sum()), "items_without_interactions": int((per_item == 0).sum()),
        "cold_items": int(items["cold"].sum()),
        "cold_items_with_interactions": int((per_item[items["cold"]] > 0).sum()),
        "interactions_with_cold_items": int(items["cold"][inter["item"]].sum()),
        "cold_release_window": [low, high],
        "interactions_before_cold_release_share": float(before_release.mean()),
        "top_20pct_items_share": float(top.sum() / per_item.sum()),
        "max_item_interactions": int(per_item.max()),
        "num_series": int(items["series"].max()) + 1,
        "mean_tags_per_item": float((items["tags"] >= 0).sum(axis=1).mean()),
        "timestamp_range": [int(inter["timestamp"].min()), int(inter["timestamp"].max())],
        "item_feature_mi_nats": measure_dependence(items, ITEM_FEATURES),
    }


def generate(config: LongTailConfig) -> GeneratedFiles:
    """Generates the ``long_tail_features`` data set of ``config`` into ``config.output_dir``.

    Raises:
      ValueError: see :func:`pipelines.synthetic.output.check_output_dir`.
    """
    return output.generate(config, sample_items, sample_interactions, _item_rows, _stats,
                                     ITEM_FEATURES, MULTIVALENT, {"regime": REGIME})
