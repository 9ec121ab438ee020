"""The MovieLens adapter (``pipelines/features/movielens.py``)."""

from __future__ import annotations



from pipelines.features import movielens

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


def test_movielens_item_adapter():
    row = movielens.movie_row({"movieId": "1", "title": "City of Lost Children, The (1995)", "genres": "A|B"})
    assert row["year"] == "1995-1999" and row["title_words"] == ["city", "lost", "children"]
    assert movielens.movie_row({"title": "Babylon 5"})["year"] == ""
