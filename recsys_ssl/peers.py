"""The peers' models: popularity, cosine item-kNN and EASE (closed form), on binary user x item matrices.

Each has ``fit(X)`` (``X``: binary float32 [users, N] CSR) and ``score(queries)`` (binary [Q, N] CSR,
the queries' items -> float32 [Q, N] scores), ``nbytes()`` (the fitted model's size), a ``name``
and the ``parameter`` tuned (None for popularity). ``recsys_ssl.baselines`` runs them under the
ranking protocol.

- **popularity**: an item's number of interacting users.
- **item-kNN**: cosine similarity of the items' user sets, ``s_ij = |U_i & U_j| / sqrt(|U_i| |U_j|)``
  (``s_ii = 0``); each item keeps its ``neighbours`` most similar items (row ``i`` of ``S``);
  ``score(q, j) = sum_{i in q} s_ij``.
- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019, eq. 8):
  ``P = (X^T X + lambda I)^-1``, ``B_ij = -P_ij / P_jj`` for ``i != j``, ``B_jj = 0``;
  ``score(q, .) = x_q B``. Dense items x items float64 matrices (about 3 N^2 x 8 bytes at peak:
  G, its inverse in place and B), so it refuses corpora above ``max_items`` (default 20,000
  items: about 9 GiB), naming the limit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.linalg
import scipy.sparse as sp

EASE_MAX_ITEMS = 20_000
EASE_BYTES_PER_CELL = 3 * 8  # G, its inverse (in place) and B, float64


def interaction_matrix(row_of_user: Mapping[str, int], users: np.ndarray, items: np.ndarray,
                       num_items: int) -> sp.csr_matrix:
    """Binary float32 [num_users, num_items] CSR matrix of (user, corpus row) pairs (rows < 0 skipped)."""
    keep = items >= 0
    rows = np.fromiter((row_of_user[u] for u in users[keep]), np.int64, int(keep.sum()))
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, items[keep])),
                           shape=(len(row_of_user), num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


class Popularity:
    """``score(q, j)`` = number of fit users of item ``j`` (the same ranking for every query)."""

    name = "popularity"
    parameter = None

    def __init__(self, value=None):
        del value

    def fit(self, matrix: sp.csr_matrix) -> Popularity:
        self.counts = np.asarray(matrix.sum(axis=0), np.float32).ravel()
        return self

    def score(self, queries: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.counts, (queries.shape[0], 1))

    def nbytes(self) -> int:
        return self.counts.nbytes


class ItemKNN:
    """Cosine item-kNN (see the module docstring).

    Args:
      neighbours: how many most similar items each item keeps.
    """

    name = "itemknn"
    parameter = "neighbours"

    def __init__(self, neighbours: int):
        if int(neighbours) < 1:
            raise ValueError(f"item-kNN neighbours must be >= 1, received {neighbours}")
        self.neighbours = int(neighbours)

    def fit(self, matrix: sp.csr_matrix) -> ItemKNN:
        self.similarity = cosine_neighbours(matrix, self.neighbours)
        return self

    def score(self, queries: sp.csr_matrix) -> np.ndarray:
        return np.asarray((queries @ self.similarity).toarray(), np.float32)

    def nbytes(self) -> int:
        s = self.similarity
        return s.data.nbytes + s.indices.nbytes + s.indptr.nbytes


def cosine_neighbours(matrix: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """float32 [N, N] CSR: row ``i`` holds the ``neighbours`` largest cosine similarities
    ``|U_i & U_j| / sqrt(|U_i| |U_j|)`` of item ``i`` (``j != i``, only positive ones; ties by
    the lower ``j``)."""
    x = matrix.tocsc().astype(np.float32)
    co = (x.T @ x).tocsr()
    co.setdiag(0.0)
    co.eliminate_zeros()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    co = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ co @ sp.diags(1.0 / np.maximum(norms, 1e-12))
    co = co.tocsr()
    co.sort_indices()
    data, indices, indptr = [], [], [0]
    for i in range(co.shape[0]):
        start, end = co.indptr[i], co.indptr[i + 1]
        values, columns = co.data[start:end], co.indices[start:end]
        if len(values) > neighbours:
            order = np.lexsort((columns, -values))[:neighbours]
            values, columns = values[order], columns[order]
        data.append(values)
        indices.append(columns)
        indptr.append(indptr[-1] + len(values))
    return sp.csr_matrix((np.concatenate(data).astype(np.float32), np.concatenate(indices), np.array(indptr)),
                         shape=co.shape)


class EASE:
    """EASE (Steck 2019), closed form (see the module docstring).

    Args:
      l2: lambda, the L2 weight (> 0).
      max_items: the largest corpus it fits (its dense items x items matrices).
    """

    name = "ease"
    parameter = "lambda"

    def __init__(self, l2: float, max_items: int = EASE_MAX_ITEMS):
        if not float(l2) > 0:
            raise ValueError(f"EASE lambda must be > 0, received {l2}")
        self.l2, self.max_items = float(l2), int(max_items)

    @staticmethod
    def check_size(num_items: int, max_items: int = EASE_MAX_ITEMS) -> None:
        """Raises ValueError when an ``num_items`` corpus exceeds ``max_items``."""
        if num_items > max_items:
            raise ValueError(
                f"EASE needs dense {num_items:,} x {num_items:,} float64 matrices (about "
                f"{EASE_BYTES_PER_CELL * num_items ** 2 / 2 ** 30:.1f} GiB at peak); the limit is {max_items:,} items "
                f"(about {EASE_BYTES_PER_CELL * max_items ** 2 / 2 ** 30:.1f} GiB, --ease_max_items): use popularity "
                "or item-kNN on this corpus, or raise the limit on a machine with the memory")

    def fit(self, matrix: sp.csr_matrix) -> EASE:
        num_items = matrix.shape[1]
        self.check_size(num_items, self.max_items)
        x = matrix.tocsc().astype(np.float64)
        gram = np.asarray((x.T @ x).toarray(), np.float64)
        gram[np.diag_indices(num_items)] += self.l2
        self.weights = ease_weights(gram)
        return self

    def score(self, queries: sp.csr_matrix) -> np.ndarray:
        return np.asarray(queries @ self.weights, np.float32)

    def nbytes(self) -> int:
        return self.weights.nbytes


def ease_weights(regularised_gram: np.ndarray) -> np.ndarray:
    """EASE's B from ``G = X^T X + lambda I`` (float64 [N, N], overwritten): float32 [N, N].

    ``P = G^-1`` through a Cholesky factorisation (G is symmetric positive definite);
    ``B = I - P diag(1 / diag(P))``, i.e. ``B_ij = -P_ij / P_jj`` off the diagonal and 0 on it.
    """
    factor, info = scipy.linalg.lapack.dpotrf(regularised_gram, lower=False, overwrite_a=True)
    if info != 0:
        raise ValueError(f"X^T X + lambda I is not positive definite (LAPACK dpotrf info {info})")
    inverse, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"inverting X^T X + lambda I failed (LAPACK dpotri info {info})")
    inverse = np.triu(inverse) + np.triu(inverse, 1).T  # dpotri fills the upper triangle only
    diagonal = np.diag(inverse).copy()
    inverse /= -diagonal[None, :]
    inverse[np.diag_indices_from(inverse)] = 0.0
    return inverse.astype(np.float32)



PEER_CLASSES = {"popularity": Popularity, "itemknn": ItemKNN, "ease": EASE}
PEERS = tuple(PEER_CLASSES)
# The tuning grids on validation (the EASE grid is extended until the chosen lambda has a decade on either side).
DEFAULT_EASE_LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
DEFAULT_KNN_NEIGHBOURS = (10, 20, 50, 100, 200, 500, 1000)
