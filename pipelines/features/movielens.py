"""MovieLens adapter onto the generic input path.

``ratings.csv`` is already an interaction log (userId, movieId, rating, timestamp); ``tags.csv`` is
a log of timestamped item feature values (the ``tags`` feature); ``movies.csv`` (movieId, title,
genres) becomes items through :func:`movie_row`, which derives

- ``genres``: multivalent, split on ``|``; "(no genres listed)" counts as missing;
- ``year``: the release year from the title's trailing "(YYYY)", bucketed into 5-year spans
  ("1995-1999"); titles without a year have no value;
- ``title_words``: multivalent, lower-cased word tokens of the title without the year, minus a
  short list of English stop words.
"""

from __future__ import annotations

import os
import re

from pipelines.io.records import InputSpec, ItemFeatureColumn

DEFAULT_SUBDIR = os.path.join("movielens", "ml-latest-small")
YEAR_BUCKET_SPAN = 5
_YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
STOP_WORDS = frozenset(
    "a an and at by for from in into of on or the to with la le les de des du el los il".split()
)


def year_bucket(year: int, span: int = YEAR_BUCKET_SPAN) -> str:
    start = year - year % span
    return f"{start}-{start + span - 1}"


def title_words(title: str) -> list[str]:
    """Lower-cased word tokens of a title without its year, stop words removed (order kept)."""
    title = _YEAR.sub("", title)
    words = []
    for word in _WORD.findall(title.lower()):
        if word not in STOP_WORDS and word not in words:
            words.append(word)
    return words


def movie_row(row: dict) -> dict:
    """Adds ``year`` and ``title_words`` to a raw movies.csv row (a ``{column: text}`` dict)."""
    title = str(row.get("title", ""))
    match = _YEAR.search(title)
    return {
        **row,
        "year": year_bucket(int(match.group(1))) if match else "",
        "title_words": title_words(title),
    }


def movielens_input_spec(data_dir: str) -> InputSpec:
    """The generic :class:`InputSpec` of a MovieLens ``ml-latest-*`` directory."""
    for name in ("ratings.csv", "movies.csv"):
        if not os.path.isfile(os.path.join(data_dir, name)):
            raise FileNotFoundError(
                f"{name} not found in {data_dir!r}: expected a MovieLens ml-latest(-small) directory "
                "(fetch it with `python -m pipelines download --datasets movielens --data_dir DATA_ROOT`)"
            )
    tags_path = os.path.join(data_dir, "tags.csv")
    events = ()
    if os.path.isfile(tags_path):
        events = ({"path": tags_path, "item_id": "movieId", "value": "tag", "timestamp": "timestamp",
                   "user_id": "userId", "feature": "tags"},)
    return InputSpec(
        interactions_path=os.path.join(data_dir, "ratings.csv"),
        user_id_column="userId",
        item_id_column="movieId",
        timestamp_column="timestamp",
        weight_column="rating",
        items_path=os.path.join(data_dir, "movies.csv"),
        items_id_column="movieId",
        item_features=(
            ItemFeatureColumn("genres", "genres", multivalent=True, separator="|"),
            ItemFeatureColumn("year", "year"),
            ItemFeatureColumn("title_words", "title_words", multivalent=True),
            ItemFeatureColumn("tags", "tags", multivalent=True, lowercase=True),
        ),
        item_events=events,
        item_row_fn=movie_row,
    )
