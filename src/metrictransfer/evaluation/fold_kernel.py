"""A one-pass CPU kernel that folds a block of distances into the queries' running retrieval state.

Why a compiled kernel (numba) instead of torch: on the CPU, the blocked engine's time beyond the Gram
matrix went to generic passes over each block (a row minimum, a comparison and count, and a ``topk``
over the rows that could still matter, strided for the transposed half). Almost every entry is beyond
anything a query still needs, so one read per entry, with a branch that is rarely taken, does the work
of all of them. torch has no such fused operation on the CPU.

The state of a query (see ``knn.py``): ``near`` (its nearest positive), ``far`` (its farthest),
``count`` (other-class items at least as close as ``near``) and ``buffer``, its closest other-class
distances that are not beyond ``far``, kept sorted ascending (padded with +inf; only those can move a
positive's position). Same-class entries of the block must already be +inf.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _insert(buffer: np.ndarray, q: int, value: float) -> None:
    """Insert ``value`` into the sorted row ``q`` of ``buffer``, dropping its largest entry."""
    pos = buffer.shape[1] - 1
    while pos > 0 and buffer[q, pos - 1] > value:
        buffer[q, pos] = buffer[q, pos - 1]
        pos -= 1
    buffer[q, pos] = value


@njit(cache=True, nogil=True, inline="always")
def keep_of(buffer: np.ndarray, q: int, farthest: float) -> float:
    """How far an other-class distance may be and still change query ``q``'s buffer (-inf: nothing can)."""
    k = buffer.shape[1]
    return min(farthest, buffer[q, k - 1]) if k > 0 else -np.inf


@njit(cache=True, nogil=True, inline="always")
def take(buffer: np.ndarray, q: int, value: float, nearest: float, farthest: float, keep: float) -> tuple[int, float]:
    """Fold one other-class distance no farther than query ``q`` still needs (its ``keep``) into its state:
    (1 when it is at least as close as the nearest positive, else 0; the query's new ``keep``)."""
    k = buffer.shape[1]
    if k > 0 and value <= keep and value < buffer[q, k - 1]:
        _insert(buffer, q, value)
        keep = keep_of(buffer, q, farthest)
    return (1 if value <= nearest else 0), keep


_SPAN = 64  # entries tested at once with vector instructions before the rare scalar look


@njit(cache=True, nogil=True, fastmath=True)
def fold_rows(d: np.ndarray, start: int, stop: int, near: np.ndarray, far: np.ndarray, count: np.ndarray, buffer: np.ndarray) -> None:
    """Rows ``start:stop`` of ``d`` are queries (``near``, ``far``, ``count`` and ``buffer`` are indexed by row)."""
    n_cols = d.shape[1]
    for q in range(start, stop):
        nearest, farthest = near[q], far[q]
        keep = keep_of(buffer, q, farthest)  # an entry must be <= keep to enter the buffer
        threshold = max(nearest, keep)
        ahead = 0
        for j0 in range(0, n_cols, _SPAN):
            j1 = min(j0 + _SPAN, n_cols)
            if j1 - j0 == _SPAN:  # a branch-free count that compiles to vector instructions: does any entry matter?
                hits = 0
                for j in range(_SPAN):
                    hits += d[q, j0 + j] <= threshold
                if hits == 0:
                    continue
            for j in range(j0, j1):
                value = d[q, j]
                if value <= threshold:
                    before, keep = take(buffer, q, value, nearest, farthest, keep)
                    ahead += before
                    threshold = max(nearest, keep)
        count[q] += ahead


@njit(cache=True, nogil=True, fastmath=True)
def fold_columns(d: np.ndarray, start: int, stop: int, near: np.ndarray, far: np.ndarray, count: np.ndarray, buffer: np.ndarray) -> None:
    """Columns ``start:stop`` of ``d`` are queries (the state is indexed by column). A span of columns at a
    time, its part of every row is read in turn: memory order, and the span's state stays in registers."""
    keep = np.empty(_SPAN, dtype=d.dtype)
    threshold = np.empty(_SPAN, dtype=d.dtype)
    ahead = np.zeros(_SPAN, dtype=np.int64)
    for c0 in range(start, stop, _SPAN):
        c1 = min(c0 + _SPAN, stop)
        for j in range(c0, c1):
            keep[j - c0] = keep_of(buffer, j, far[j])
            threshold[j - c0] = max(near[j], keep[j - c0])
            ahead[j - c0] = 0
        for i in range(d.shape[0]):
            if c1 - c0 == _SPAN:  # as in fold_rows
                hits = 0
                for j in range(_SPAN):
                    hits += d[i, c0 + j] <= threshold[j]
                if hits == 0:
                    continue
            for j in range(c0, c1):
                value = d[i, j]
                if value <= threshold[j - c0]:
                    before, keep[j - c0] = take(buffer, j, value, near[j], far[j], keep[j - c0])
                    ahead[j - c0] += before
                    threshold[j - c0] = max(near[j], keep[j - c0])
        for j in range(c0, c1):
            count[j] += ahead[j - c0]


class BlockFolder:
    """Folds blocks into the running state of every query, split over ``threads`` threads.

    The kernels release the GIL, so plain Python threads run them in parallel; they wait on a lock, not
    in a spin loop, while torch computes the next block's distances with its own threads.
    """

    def __init__(self, near: np.ndarray, far: np.ndarray, count: np.ndarray, buffers: list[np.ndarray], threads: int):
        self.near, self.far, self.count, self.buffers = near, far, count, buffers
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _run(self, kernel: Callable[..., None], d: np.ndarray, n: int, offset: int, buffer: np.ndarray) -> None:
        near, far = self.near[offset : offset + n], self.far[offset : offset + n]
        count = self.count[offset : offset + n]
        if self.pool is None or n < 2 * _SPAN:
            kernel(d, 0, n, near, far, count, buffer)
            return
        step = -(-n // self.threads // _SPAN) * _SPAN  # whole spans per thread
        jobs = [self.pool.submit(kernel, d, s, min(s + step, n), near, far, count, buffer) for s in range(0, n, step)]
        for job in jobs:
            job.result()

    def fold(self, d: np.ndarray, r0: int, i: int, c0: int | None = None, j: int | None = None) -> None:
        """Block ``d`` of rows from ``r0`` (row block ``i``); with ``c0`` and ``j``, also its columns as queries."""
        self._run(fold_rows, d, d.shape[0], r0, self.buffers[i])
        if c0 is not None and j is not None:
            self._run(fold_columns, d, d.shape[1], c0, self.buffers[j])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
