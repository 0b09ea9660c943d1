"""The CPU's fastest exact path: blocks screened by a low-precision product, entries decided in float64.

On the CPU the float32 product of each block was two thirds of an SOP-scale evaluation. The product of
each item's integer quantisation (a scale per item) takes a quarter of that time where the processor has
int8 dot instructions (VNNI), half of it on any other x86 processor with AVX2 (``cpu_has_int8_products``);
the bfloat16 product about 40 % where the processor multiplies bfloat16 (``cpu_has_bfloat16_dot``). Its
error is bounded per entry (``block_error`` and ``entry_error``); an entry whose distance minus that bound
is beyond what its query still needs cannot change any metric, and every other entry is recomputed
exactly (``screen_kernel``). The result is the metrics of float64 distances: the other paths work in
float32, so they can differ from this one only where two distances are within float32 rounding. The same
screen over a float32 product (``precision=torch.float32``) replaces the float32 kernel's entry-by-entry
fold with one vectorised pass per row, for CPUs with neither.

Before the first block is used, a sample of its products is checked against float64 (``check_bound``): a
BLAS that broke the bound would be refused, not trusted.
"""

from __future__ import annotations

import os
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


# Sums of int8 products are exact in int32 while D·127² < 2³¹; below 16 dimensions the quantisation is too
# coarse to screen anything, and torch's CPU int8 product is wrong for D = 1 (torch 2.14).
INT8_DIMS = (16, 2**17)


@lru_cache(maxsize=1)
def _cpu_features() -> dict[str, bool]:
    try:
        import llvmlite.binding as llvm

        return dict(llvm.get_host_cpu_features())
    except Exception:  # pragma: no cover - an llvmlite without feature detection: assume none
        return {}


def cpu_has_bfloat16_dot() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX): elsewhere the screen is slower."""
    features = _cpu_features()
    return bool(features.get("avx512bf16") or features.get("amx-bf16"))


def cpu_has_int8_products() -> bool:
    """Whether torch's int8 matrix product (oneDNN) is fast and, with 7-bit values, exact here: any x86 CPU with
    AVX2. The tests check its sums with oneDNN held to AVX2 and to AVX-512 without VNNI."""
    return hasattr(torch, "_int_mm") and bool(_cpu_features().get("avx2"))


def int8_levels() -> int:
    """The largest integer coordinate of the int8 screen: 127 where oneDNN multiplies int8 with VNNI or AMX
    (products summed in int32), 63 elsewhere. Without them it sums pairs of products in int16 (one side shifted
    by 128 to unsigned), which 8-bit values overflow (wrong sums, measured with ONEDNN_MAX_CPU_ISA=AVX2) and
    7-bit ones cannot (2·191·63 < 2¹⁵). A coarser step widens the bound: more entries are decided in float64."""
    features = _cpu_features()
    vnni = features.get("avx512vnni") or features.get("avxvnni") or features.get("amx-int8")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()  # oneDNN's instructions can be held back
    allowed = cap in ("", "ALL", "DEFAULT") or any(name in cap for name in ("VNNI", "BF16", "FP16", "AMX", "AVX10"))
    return 127 if vnni and allowed else 63


def screen_precision() -> torch.dtype | None:
    """The precision of the products that screen large CPU evaluations by default: int8 on x86 CPUs with
    AVX2, else bfloat16 where the CPU multiplies it in hardware, else float32. At SOP scale
    (benchmarks/evaluation_scale.py, on a Zen 4) the int8 screen took 6.6 s, the bfloat16 one 7.7 s and the
    float32 one 14.1 s, against 17.9 s for the float32 kernel of ``fold_kernel``; None would choose that kernel."""
    if cpu_has_int8_products():
        return torch.int8
    return torch.bfloat16 if cpu_has_bfloat16_dot() else torch.float32


def output_rounding(precision: torch.dtype) -> float:
    """How far a product's value may be from the exact product of the quantised items, relative to itself: a
    bfloat16 output is within 2^-8 of its float32 sum (doubled for safety); an int8 one is exact in int32, then
    converted and multiplied by the two items' scales in float32 (three roundings of 2^-24, taken as 2^-21);
    a float32 product is its sum."""
    return {torch.bfloat16: 2.0**-7, torch.int8: 2.0**-21}.get(precision, 0.0)


class _Operand:
    """One side's float32 embeddings (contiguous, sorted), the screen's copy of them less ``shift`` in its
    precision, and per-item norms for the bound.

    The screen works on x - shift (Euclidean distances do not change): int8's step is a fraction of each
    item's largest coordinate, so a common offset left in would widen the bound for every entry. An int8
    item is q·s: q = round((x - shift)/s) in [-L, L], s its largest magnitude / L (L = ``int8_levels``;
    ``scale`` is 1 in the other precisions). Every bound uses the roundings as measured against x - shift in
    float64.
    """

    def __init__(self, x: torch.Tensor, euclidean: bool, precision: torch.dtype = torch.bfloat16, shift: torch.Tensor | None = None):
        if precision not in (torch.int8, torch.bfloat16, torch.float32):
            raise ValueError(f"the screen's products are int8, bfloat16 or float32, not {precision}")
        self.euclidean, self.precision = euclidean, precision
        self.x = x.float().contiguous()
        n, dim = self.x.shape
        shift64 = torch.zeros(dim, dtype=torch.float64) if shift is None else shift.double()
        levels = int8_levels() if precision == torch.int8 else 0
        self.low = torch.empty((n, dim), dtype=precision)
        self.scale = torch.ones(n, dtype=torch.float32)
        self.sq, self.norm, self.low_norm, self.rounding = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
        for s in range(0, n, NORM_CHUNK):  # float64 copies a chunk at a time: no full-size temporaries
            part = slice(s, s + NORM_CHUNK)
            x64 = self.x[part].double() - shift64  # rounded to 2^-53 of itself: far inside the bound's margins
            if precision == torch.int8:
                scale = (x64.abs().amax(1) / levels).float().clamp_min(torch.finfo(torch.float32).tiny)
                self.scale[part] = scale
                low64 = x64.div(scale.double()[:, None]).round_().clamp_(-levels, levels)
                self.low[part] = low64.to(torch.int8)
                low64.mul_(scale.double()[:, None])
            else:
                self.low[part] = x64.to(precision)
                low64 = self.low[part].double()
            self.sq[part] = x64.pow(2).sum(1)
            self.norm[part] = self.sq[part].sqrt()
            self.low_norm[part] = torch.linalg.vector_norm(low64, dim=1)
            self.rounding[part] = torch.linalg.vector_norm(x64.sub_(low64), dim=1)  # |x - x̂|, measured, not assumed
        if not euclidean:
            self.sq.zero_()  # the kernel's test adds squared norms for Euclidean distances only
        # entry_error's terms for the kernel's float32 test: |x̂|, |x - x̂| and |x| (1 % more)
        self.error_terms = (1.01 * torch.stack([self.low_norm, self.rounding, self.norm], 1)).float().numpy()
        # int8: the gallery side's columns contiguous too, the layout oneDNN's int8 product is fastest with
        self.low_t = self.low.t().contiguous() if precision == torch.int8 else None
        self.shift64 = shift64

    def shifted(self, items: slice) -> torch.Tensor:
        """Some items' values less the shift, in float64: what the screen's products approximate."""
        return self.x[items].double() - self.shift64


def block_error(a: _Operand, b: _Operand, rows: slice, cols: slice) -> float:
    """The part of the bound on |x·y - (the screen's product before its output rounding)| shared by a block's
    entries (x, y less the shift); ``entry_error`` adds each entry's own part.

    x·y - x̂·ŷ = x̂·(y - ŷ) + (x - x̂)·y, bounded by Cauchy-Schwarz with each item's measured rounding
    (``entry_error``); the float32 dot product of x̂ and ŷ errs by at most γ_D·|x̂||ŷ| < (D + 2)·2^-24·|x̂||ŷ|
    in any order of summation (products of bfloat16 numbers are exact in float32, of float32 ones not; int8
    sums are exact in int32, and the term is kept as a margin). Both are worst cases (the measured error is
    about a tenth); 1 % more, plus 2^-18 of the largest magnitude the kernel's float32 test handles
    (distances up to 2(|x|² + |y|²), products, needs): a dozen roundings of at most 2^-24 of it each.
    """
    a_low, b_low = float(a.low_norm[rows].max()), float(b.low_norm[cols].max())
    accumulation = (a.x.shape[1] + 2) * 2.0**-24 * a_low * b_low
    magnitude = 2 * (float(a.sq[rows].max()) + float(b.sq[cols].max())) + 4 * a_low * b_low
    return 1.01 * accumulation + 2.0**-18 * magnitude + 1e-30


def entry_error(a: _Operand, b: _Operand, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Each entry's own part of the bound, |x̂||y - ŷ| + |x - x̂||y| (1 % more), for items ``i`` of ``a`` and
    ``j`` of ``b`` (broadcast). Per entry, not the block's largest: the int8 roundings vary from item to item,
    and the block's largest widened every entry's bound by about half."""
    return 1.01 * (a.low_norm[i] * b.rounding[j] + a.rounding[i] * b.norm[j])


def check_bound(products: torch.Tensor, a: _Operand, b: _Operand, rows: slice, cols: slice, error: float) -> None:
    """Refuse a BLAS whose products break the bound on a sample of the first block."""
    generator = torch.Generator().manual_seed(0)
    n_rows, n_cols = products.shape
    i = torch.randint(0, n_rows, (_SAMPLE,), generator=generator)
    j = torch.randint(0, n_cols, (_SAMPLE,), generator=generator)
    got = products[i, j].double() * a.scale[rows][i].double() * b.scale[cols][j].double()
    exact = (a.shifted(rows)[i] * b.shifted(cols)[j]).sum(1)
    bound = error + entry_error(a, b, i + rows.start, j + cols.start) + output_rounding(a.precision) * got.abs()
    if bool(((got - exact).abs() > bound).any()):
        raise RuntimeError(
            f"the {str(a.precision).removeprefix('torch.')} product broke its error bound on this CPU; "
            "evaluate with the float32 kernel (screen=False)"
        )


def block_products(left: torch.Tensor, right: torch.Tensor, right_t: torch.Tensor | None = None) -> torch.Tensor:
    """A block's products in the screen's precision (the only matrix the screened path builds); int8 ones
    summed in int32, not yet multiplied by the items' scales. ``right_t``: ``right`` transposed, if at hand."""
    if left.dtype == torch.int8:  # oneDNN's int8 product is fastest with the right operand's columns contiguous
        return torch._int_mm(left, right.t().contiguous() if right_t is None else right_t)
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
        self.x_scale, self.y_scale = rows.scale.numpy(), cols.scale.numpy()
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
        right_t = None if self.cols.low_t is None else self.cols.low_t[:, cols]
        products = block_products(self.rows.low[rows], self.cols.low[cols], right_t)
        error = block_error(self.rows, self.cols, rows, cols)
        if not self.checked:
            check_bound(products, self.rows, self.cols, rows, cols, error)
            self.checked = True
        # raw bits for the kernel, which widens bfloat16's 16 to float32's 32 (numpy has no bfloat16); int32
        # sums as they are, which it converts and multiplies by the items' scales
        if products.dtype == torch.bfloat16:
            bits, shift = products.view(torch.int16).numpy().view(np.uint16), 16
        elif products.dtype == torch.int32:
            bits, shift = products.numpy(), -1
        else:
            bits, shift = products.numpy().view(np.uint32), 0
        rounding = output_rounding(products.dtype)
        need = np.full(c1 - c0, -np.inf)
        if column_state is not None:
            column_need(*column_state[:2], column_state[3], need)
        near, far, count, buffer = row_state
        x, y = self.x_np[r0:r1], self.y_np[c0:c1]
        x_sq, y_sq, lo, hi = self.x_sq[r0:r1], self.y_sq[c0:c1], self.lo[r0:r1], self.hi[r0:r1]
        x_scale, y_scale = self.x_scale[r0:r1], self.y_scale[c0:c1]
        x_terms, y_terms = self.rows.error_terms[r0:r1], self.cols.error_terms[c0:c1]

        def run(t: int, start: int, stop: int) -> tuple[int, int]:
            column, distance = self.hits[t]
            return self.screen_rows(
                bits, shift, x_scale, y_scale, rounding, start, stop, c0, x, y, x_sq, y_sq, self.scale, self.euclidean, error,
                x_terms, y_terms,
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


def operands(
    rows_x: torch.Tensor, cols_x: torch.Tensor, same_set: bool, metric: str, precision: torch.dtype, shift: torch.Tensor | None = None
) -> tuple[_Operand, _Operand]:
    """The queries' and the gallery's operands (one object when all-vs-all), products in ``precision``
    (int8 only within ``INT8_DIMS``: else bfloat16 or float32, as the CPU has), both less ``shift``."""
    if precision == torch.int8 and not INT8_DIMS[0] <= rows_x.shape[1] <= INT8_DIMS[1]:
        precision = torch.bfloat16 if cpu_has_bfloat16_dot() else torch.float32
    rows = _Operand(rows_x, metric == "euclidean", precision, shift)
    return rows, rows if same_set else _Operand(cols_x, metric == "euclidean", precision, shift)


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
