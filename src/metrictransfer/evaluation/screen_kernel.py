"""CPU kernels of the screened evaluation (``screened.py``): a low-precision product screens, float64 decides.

Each block's products come from an int8 matrix product of the items' quantisations (where the CPU has
int8 dot instructions), a bfloat16 one (about 2.5× the float32 one's speed where the CPU has bfloat16 dot
instructions), or a float32 one elsewhere. With a proven bound on its error
(``screened.block_error``), an entry whose distance is certainly beyond what its query still needs is
passed over; every other entry's distance is recomputed in float64 from the float32 embeddings (exact
products, float64 sums), and only those exact values enter the query's state. So the metrics are those of
float64 distances, whatever the screen missed by rounding: it cannot miss anything, only let through a few
entries more.

The state of a query is ``fold_kernel``'s (near, far, count and a sorted buffer of its closest other-class
distances), in float64. Why numba and not torch: as in ``fold_kernel``, one read of each entry with a
rarely taken branch; torch has no such fused operation, and no view of bfloat16 bits on the CPU for numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from metrictransfer.evaluation.fold_kernel import keep_of, take

# No 'nnan'/'ninf': the kernels compare against +inf and -inf on purpose.
_FLAGS = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FLAGS, inline="always")
def _exact(x: np.ndarray, i: int, y: np.ndarray, j: int, euclidean: bool) -> float:
    """The distance stand-in of ``knn.pair_distances`` in float64: squared Euclidean, or minus the dot product."""
    total = 0.0
    if euclidean:
        for t in range(x.shape[1]):
            diff = np.float64(x[i, t]) - np.float64(y[j, t])
            total += diff * diff
    else:
        for t in range(x.shape[1]):
            total -= np.float64(x[i, t]) * np.float64(y[j, t])
    return total


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def positive_distances(
    x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, offsets: np.ndarray, same_set: bool, euclidean: bool, flat: np.ndarray
) -> None:
    """Every query's exact distances to its positives (gallery items ``lo[q]:hi[q]``, itself excluded), sorted."""
    for q in range(x.shape[0]):
        start = offsets[q]
        n = 0
        for j in range(lo[q], hi[q]):
            if same_set and j == q:
                continue
            flat[start + n] = _exact(x, q, y, j, euclidean)
            n += 1
        flat[start : start + n].sort()


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def screen_rows(
    products: np.ndarray,
    shift: int,
    x_scale: np.ndarray,
    y_scale: np.ndarray,
    output_rounding: float,
    start: int,
    stop: int,
    c0: int,
    x: np.ndarray,
    y: np.ndarray,
    x_sq: np.ndarray,
    y_sq: np.ndarray,
    scale: float,
    euclidean: bool,
    error: float,
    x_terms: np.ndarray,
    y_terms: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    near: np.ndarray,
    far: np.ndarray,
    count: np.ndarray,
    buffer: np.ndarray,
    column_need: np.ndarray,
    hit_column: np.ndarray,
    hit_distance: np.ndarray,
) -> tuple[int, int]:
    """Fold rows ``start:stop`` of a block into their queries' state; collect entries their columns may need.

    ``products`` holds the block's products as raw bits: bfloat16 as uint16 (``shift`` 16 widens them to
    float32), or float32 as uint32 (``shift`` 0); or int8 products' int32 sums (``shift`` -1), whose value
    is the sum times the row's ``x_scale`` and the column's ``y_scale``. An entry's distance is at least
    ``x_sq[q] + y_sq[j] + scale * p - |scale| * (error + e + output_rounding |p|)`` (``scale`` is -2 or -1),
    where ``e = x_terms[q, 0] y_terms[j, 1] + x_terms[q, 1] y_terms[j, 2]`` is the entry's own part of the
    bound (``screened.entry_error``); it matters to
    its row when that is at most the row's need, to its column when at most ``column_need[j]`` (-inf when
    columns are not queries). Rows index ``x``, ``x_sq``, ``lo``, ``hi`` and the row state; columns ``y``
    and ``y_sq``. ``lo``/``hi`` are the rows' same-class column ranges in global column numbers (``c0`` is
    the block's first column). Returns (the next row to do, the number of column hits recorded): a row is
    started only when a whole row of hits still fits, so the caller applies the hits and calls again.

    The test runs in float32 over whole rows (it vectorises; ``error`` and the terms' 1 % cover its
    rounding, see ``screened.block_error``); only rows where some entry passes are read again, entry by entry.
    """
    n_cols = products.shape[1]
    capacity = hit_column.shape[0]
    widened = np.empty(n_cols, dtype=np.uint32)
    values = widened.view(np.float32)
    magnitude = np.float32(abs(scale))
    up, down = np.float32(1.0 + output_rounding), np.float32(1.0 - output_rounding)
    column_room = np.empty(n_cols, dtype=np.float32)  # column_need - y_sq + |scale| error, per column
    y_sq32 = np.empty(n_cols, dtype=np.float32)
    slack = np.empty(n_cols, dtype=np.float32)
    y_rounding, y_norm = np.empty(n_cols, dtype=np.float32), np.empty(n_cols, dtype=np.float32)
    for j in range(n_cols):
        column_room[j] = column_need[j] - y_sq[j] + abs(scale) * error
        y_sq32[j] = y_sq[j]
        y_rounding[j], y_norm[j] = y_terms[j, 1], y_terms[j, 2]
    hits = 0
    for q in range(start, stop):
        if capacity - hits < n_cols:
            return q, hits
        nearest, farthest = near[q], far[q]
        keep = keep_of(buffer, q, farthest)
        need = max(nearest, keep)
        row_room = np.float32(need - x_sq[q] + abs(scale) * error)
        base = np.float32(x_sq[q])
        row_low, row_rounding = magnitude * x_terms[q, 0], magnitude * x_terms[q, 1]  # |scale| times the row's terms
        if shift < 0:
            row_scale = x_scale[q]
            for j in range(n_cols):
                values[j] = np.float32(products[q, j]) * row_scale * y_scale[j]
        else:
            for j in range(n_cols):
                widened[j] = np.uint32(products[q, j]) << shift
        passing = 0
        for j in range(n_cols):  # vectorised: the slack of every entry for its row or its column
            p = values[j]
            low = -magnitude * max(p * up, p * down)  # scale * p less its output rounding, scale < 0
            low -= row_low * y_rounding[j] + row_rounding * y_norm[j]  # and less the entry's own error
            slack[j] = max(row_room - y_sq32[j], column_room[j] - base) - low
            passing += slack[j] >= 0
        if passing == 0:
            continue
        ahead = 0
        for j in range(n_cols):
            if slack[j] < 0 or lo[q] <= c0 + j < hi[q]:
                continue
            p = values[j]
            low = -magnitude * max(p * up, p * down) - (row_low * y_rounding[j] + row_rounding * y_norm[j])
            for_row, for_column = low <= row_room - y_sq32[j], low <= column_room[j] - base
            if not (for_row or for_column):
                continue
            d = _exact(x, q, y, j, euclidean)
            if for_row and d <= need:
                before, keep = take(buffer, q, d, nearest, farthest, keep)
                ahead += before
                need = max(nearest, keep)
                row_room = np.float32(need - x_sq[q] + abs(scale) * error)
            if for_column:
                hit_column[hits] = j
                hit_distance[hits] = d
                hits += 1
        count[q] += ahead
    return stop, hits


@njit(cache=True, nogil=True)
def apply_column_hits(
    hit_column: np.ndarray, hit_distance: np.ndarray, hits: int, near: np.ndarray, far: np.ndarray, count: np.ndarray, buffer: np.ndarray
) -> None:
    """Fold collected (column, exact distance) entries into the columns' state; their order does not matter."""
    for h in range(hits):
        j, d = hit_column[h], hit_distance[h]
        before, _ = take(buffer, j, d, near[j], far[j], keep_of(buffer, j, far[j]))
        count[j] += before


@njit(cache=True, nogil=True)
def column_need(near: np.ndarray, far: np.ndarray, buffer: np.ndarray, out: np.ndarray) -> None:
    """Per column query, the distance up to which an entry can still change its state."""
    for j in range(near.shape[0]):
        out[j] = max(near[j], keep_of(buffer, j, far[j]))
