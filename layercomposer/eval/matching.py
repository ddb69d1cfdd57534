"""One-to-one matching of subjects to detected faces: the assignment with the largest total
similarity (the Hungarian method), written out so the core needs no scipy."""

from __future__ import annotations

import numpy as np


def best_matching(similarity: np.ndarray) -> list[tuple[int, int]]:
    """Return (row, column) pairs, each row and column used at most once, that maximise the
    summed similarity; min(rows, columns) pairs, sorted by row.

    `similarity` is (rows, columns), e.g. subjects x faces found in an output.
    """
    similarity = np.asarray(similarity, np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be 2-D, got shape {similarity.shape}")
    rows, cols = similarity.shape
    if rows == 0 or cols == 0:
        return []
    if rows > cols:  # the algorithm below needs rows <= columns
        return sorted((r, c) for c, r in best_matching(similarity.T))
    columns_of_rows = _hungarian(similarity.max() - similarity)  # maximise = minimise the gap
    return [(row, int(col)) for row, col in enumerate(columns_of_rows)]


def _hungarian(cost: np.ndarray) -> list[int]:
    """The column assigned to each row that minimises the total cost (rows <= columns).

    The O(n^2 m) shortest-augmenting-path form with row and column potentials `u`, `v`: one row
    is added at a time, and the potentials keep every reduced cost `cost - u - v` >= 0, so the
    path found is a cheapest one. Index 0 of `match`/`v` is a virtual column.
    """
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, int)  # match[j]: the row (1-based) holding column j; 0: free
    for row in range(1, n + 1):
        match[0] = row
        column = 0
        slack = np.full(m + 1, np.inf)  # cheapest reduced cost into each column so far
        previous = np.zeros(m + 1, int)  # the column before each on the cheapest path
        used = np.zeros(m + 1, bool)
        while True:
            used[column] = True
            current = match[column]
            free = ~used[1:]
            reduced = cost[current - 1] - u[current] - v[1:]
            better = free & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            previous[1:][better] = column
            candidates = np.where(free, slack[1:], np.inf)
            nxt = int(np.argmin(candidates)) + 1
            delta = candidates[nxt - 1]
            u[match[used]] += delta
            v[used] -= delta
            slack[1:][free] -= delta
            column = nxt
            if match[column] == 0:
                break
        while column:  # flip the path: each column on it takes the row before it
            before = previous[column]
            match[column] = match[before]
            column = before
    result = [0] * n
    for col in range(1, m + 1):
        if match[col]:
            result[match[col] - 1] = col - 1
    return result
