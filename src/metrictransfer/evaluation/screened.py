"""The CPU's fastest exact path: blocks screened by a low-precision product, entries decided in float64.

On the CPU the float32 product of each block was two thirds of an SOP-scale evaluation. Where the
processor has bfloat16 dot instructions (``cpu_has_bfloat16_dot``), the same product in bfloat16 takes
about 40 % of that time. Its error is bounded per block (``block_error``); an entry whose distance minus
that bound is beyond what its query still needs cannot change any metric, and every other entry is
recomputed exactly (``screen_kernel``). The result is the metrics of float64 distances: the other paths
work in float32, so they can differ from this one only where two distances are within float32 rounding.
The same screen over a float32 product (``precision=torch.float32``) replaces the float32 kernel's
entry-by-entry fold with one vectorised pass per row, for CPUs without bfloat16 instructions.

Before the first block is used, a sample of its products is checked against float64 (``check_bound``): a
BLAS that broke the bound would be refused, not trusted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

State = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # near, far, count, buffer of some queries
_HIT_CAPACITY = 1 << 16  # column entries a thread collects before they are folded in (1 MB per thread)
_SAMPLE = 4096  # products of the first block checked against float64
NORM_CHUNK = 8192  # items whose float64 copies exist at once (the norms here, the mean in knn.centre)


@lru_cache(maxsize=1)
def cpu_has_bfloat16_dot() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX): elsewhere the screen is slower."""
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - an llvmlite without feature detection: assume not
        return False
    return bool(features.get("avx512bf16") or features.get("amx-bf16"))


def screen_precision() -> torch.dtype | None:
    """The precision of the products that screen large CPU evaluations by default: bfloat16 where the CPU
    multiplies it in hardware, float32 elsewhere. At SOP scale (benchmarks/evaluation_scale.py) the float32
    screen took 13.2 s against 19.7 s for the float32 kernel of ``fold_kernel``; None would choose that kernel."""
    return torch.bfloat16 if cpu_has_bfloat16_dot() else torch.float32


def output_rounding(precision: torch.dtype) -> float:
    """How far a product's output may be from the float32 sum it rounds, relative to itself: a bfloat16
    output is within 2^-8 (doubled for safety); a float32 product is that sum."""
    return 2.0**-7 if precision == torch.bfloat16 else 0.0


class _Operand:
    """One side's float32 embeddings (contiguous, sorted), their copy in the screen's precision, and per-item
    norms for the bound."""

    def __init__(self, x: torch.Tensor, euclidean: bool, precision: torch.dtype = torch.bfloat16):
        if precision not in (torch.bfloat16, torch.float32):
            raise ValueError(f"the screen's products are bfloat16 or float32, not {precision}")
        self.euclidean, self.precision = euclidean, precision
        self.x = x.float().contiguous()
        self.low = self.x.to(precision)
        n = len(self.x)
        self.sq, self.norm, self.low_norm, self.rounding = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
        for s in range(0, n, NORM_CHUNK):  # float64 copies a chunk at a time: no full-size temporaries
            x64, low64 = self.x[s : s + NORM_CHUNK].double(), self.low[s : s + NORM_CHUNK].double()
            if euclidean:
                self.sq[s : s + NORM_CHUNK] = x64.pow(2).sum(1)
            self.norm[s : s + NORM_CHUNK] = x64.norm(dim=1)
            self.low_norm[s : s + NORM_CHUNK] = low64.norm(dim=1)
            self.rounding[s : s + NORM_CHUNK] = (x64 - low64).norm(dim=1)  # |x - bf16(x)|, measured, not assumed


def block_error(a: _Operand, b: _Operand, rows: slice, cols: slice) -> float:
    """A bound on |x·y - (the screen's product before its output rounding)| over a block.

    x·y - x̂·ŷ = x̂·(y - ŷ) + (x - x̂)·y, bounded by Cauchy-Schwarz with the measured roundings (zero in
    float32); the float32 dot product of x̂ and ŷ errs by at most γ_D·|x̂||ŷ| < (D + 2)·2^-24·|x̂||ŷ| in any
    order of summation (products of bfloat16 numbers are exact in float32, of float32 ones not). Both
    are worst cases (the measured error is about a tenth); 1 % more, plus 2^-18 of the largest magnitude
    the kernel's float32 test handles (distances up to 2(|x|² + |y|²), products, needs): a dozen roundings
    of at most 2^-24 of it each.
    """
    a_low, b_low = float(a.low_norm[rows].max()), float(b.low_norm[cols].max())
    inputs = a_low * float(b.rounding[cols].max()) + float(a.rounding[rows].max()) * float(b.norm[cols].max())
    accumulation = (a.x.shape[1] + 2) * 2.0**-24 * a_low * b_low
    magnitude = 2 * (float(a.sq[rows].max()) + float(b.sq[cols].max())) + 4 * a_low * b_low
    return 1.01 * (inputs + accumulation) + 2.0**-18 * magnitude + 1e-30


def check_bound(products: torch.Tensor, a: _Operand, b: _Operand, rows: slice, cols: slice, error: float) -> None:
    """Refuse a BLAS whose products break the bound on a sample of the first block."""
    generator = torch.Generator().manual_seed(0)
    n_rows, n_cols = products.shape
    i = torch.randint(0, n_rows, (_SAMPLE,), generator=generator)
    j = torch.randint(0, n_cols, (_SAMPLE,), generator=generator)
    got = products[i, j].double()
    exact = (a.x[rows][i].double() * b.x[cols][j].double()).sum(1)
    if bool(((got - exact).abs() > error + output_rounding(a.precision) * got.abs()).any()):
        raise RuntimeError(
            f"the {str(a.precision).removeprefix('torch.')} product broke its error bound on this CPU; "
            "evaluate with the float32 kernel (screen=False)"
        )


def block_products(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """A block's products in the screen's precision (the only matrix the screened path builds)."""
    return torch.mm(left, right.t())


class ScreenedFolder:
    """Runs the screen over blocks, rows split over threads; column hits folded in between."""

    def __init__(self, rows: _Operand, cols: _Operand, lo: np.ndarray, hi: np.ndarray, threads: int):
        self.rows, self.cols, self.euclidean = rows, cols, rows.euclidean
        self.scale = -2.0 if rows.euclidean else -1.0
        self.lo, self.hi = lo, hi
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.hits: list[tuple[np.ndarray, np.ndarray]] = []
        self.checked = False
        self.x_np, self.y_np = rows.x.numpy(), cols.x.numpy()
        self.x_sq, self.y_sq = rows.sq.numpy(), cols.sq.numpy()
        from metrictransfer.evaluation import screen_kernel  # numba: loaded only when the screen runs

        self.screen_rows: Callable[..., tuple[int, int]] = screen_kernel.screen_rows
        self.apply_column_hits: Callable[..., None] = screen_kernel.apply_column_hits
        self.column_need: Callable[..., None] = screen_kernel.column_need

    def fold(self, r0: int, r1: int, c0: int, c1: int, row_state: State, column_state: State | None) -> None:
        """Block rows r0:r1 × columns c0:c1; ``column_state`` (near, far, count, buffer of the columns'
        queries) when the block also serves its columns (all-vs-all, above the diagonal)."""
        apply_column_hits, column_need = self.apply_column_hits, self.column_need
        rows, cols = slice(r0, r1), slice(c0, c1)
        capacity = max(_HIT_CAPACITY, c1 - c0)  # the kernel starts a row only when a whole row of hits fits
        if not self.hits or len(self.hits[0][0]) < capacity:
            self.hits = [(np.empty(capacity, np.int64), np.empty(capacity, np.float64)) for _ in range(self.threads)]
        products = block_products(self.rows.low[rows], self.cols.low[cols])
        error = block_error(self.rows, self.cols, rows, cols)
        if not self.checked:
            check_bound(products, self.rows, self.cols, rows, cols, error)
            self.checked = True
        # raw bits for the kernel, which widens bfloat16's 16 to float32's 32 (numpy has no bfloat16)
        bits, shift = (
            (products.view(torch.int16).numpy().view(np.uint16), 16)
            if products.dtype == torch.bfloat16
            else (products.numpy().view(np.uint32), 0)
        )
        rounding = output_rounding(products.dtype)
        need = np.full(c1 - c0, -np.inf)
        if column_state is not None:
            column_need(*column_state[:2], column_state[3], need)
        near, far, count, buffer = row_state
        x, y = self.x_np[r0:r1], self.y_np[c0:c1]
        x_sq, y_sq, lo, hi = self.x_sq[r0:r1], self.y_sq[c0:c1], self.lo[r0:r1], self.hi[r0:r1]

        def run(t: int, start: int, stop: int) -> tuple[int, int]:
            column, distance = self.hits[t]
            return self.screen_rows(
                bits, shift, rounding, start, stop, c0, x, y, x_sq, y_sq, self.scale, self.euclidean, error,
                lo, hi, near, far, count, buffer, need, column, distance,
            )  # fmt: skip

        n = r1 - r0
        step = -(-n // self.threads)
        pending = [(t, s, min(s + step, n)) for t, s in enumerate(range(0, n, step))]
        while pending:
            if self.pool is None or len(pending) == 1:
                results = [run(*job) for job in pending]
            else:
                results = [f.result() for f in [self.pool.submit(run, *job) for job in pending]]
            for (t, _, _), (_, hits) in zip(pending, results):
                if column_state is not None and hits:
                    apply_column_hits(*self.hits[t], hits, *column_state)
            pending = [(t, done, stop) for (t, _, stop), (done, _) in zip(pending, results) if done < stop]
            if pending and column_state is not None:  # a thread's hits filled up: go on with fresher needs
                column_need(*column_state[:2], column_state[3], need)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def operands(rows_x: torch.Tensor, cols_x: torch.Tensor, same_set: bool, metric: str, precision: torch.dtype) -> tuple[_Operand, _Operand]:
    """The queries' and the gallery's operands (one object when all-vs-all), products in ``precision``."""
    rows = _Operand(rows_x, metric == "euclidean", precision)
    return rows, rows if same_set else _Operand(cols_x, metric == "euclidean", precision)


def positive_distances(
    a: _Operand, b: _Operand, lo: torch.Tensor, hi: torch.Tensor, offsets: torch.Tensor, q_pos: torch.Tensor, same_set: bool
) -> torch.Tensor:
    """Every query's float64 distances to its positives (gallery items ``lo:hi``), sorted, concatenated at ``offsets``."""
    from metrictransfer.evaluation import screen_kernel

    kernel: Callable[..., None] = screen_kernel.positive_distances
    flat = torch.empty(int(q_pos.sum()), dtype=torch.float64)
    kernel(a.x.numpy(), b.x.numpy(), lo.numpy(), hi.numpy(), offsets.numpy(), same_set, a.euclidean, flat.numpy())
    return flat


def fold_blocks(
    a: _Operand,
    b: _Operand,
    same_set: bool,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pairs: list[tuple[int, int]],
    starts: list[int],
    col_starts: list[int],
    block: int,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]],
    progress: bool,
) -> None:
    """Fold the blocks ``pairs`` of ``knn.query_statistics`` into the queries' float64 ``state`` (near, far,
    count, and per row block its buffer), in place."""
    near, far, count = (t.numpy() for t in state[:3])
    buffers = [buffer.numpy() for buffer in state[3]]
    folder = ScreenedFolder(a, b, lo.numpy(), hi.numpy(), torch.get_num_threads())
    try:
        for i, j in tqdm(pairs, desc="kNN blocks", disable=not progress, leave=False):
            r0, c0 = starts[i], col_starts[j]
            r1, c1 = min(r0 + block, len(a.x)), min(c0 + block, len(b.x))
            row_state = (near[r0:r1], far[r0:r1], count[r0:r1], buffers[i])
            column_state: State | None = None
            if same_set and j != i:
                column_state = (near[c0:c1], far[c0:c1], count[c0:c1], buffers[j])
            folder.fold(r0, r1, c0, c1, row_state, column_state)
    finally:
        folder.close()
