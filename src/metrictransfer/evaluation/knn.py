"""Exact per-query retrieval statistics from one blocked pass over the distance matrix.

The metrics need little from the neighbour lists. Recall@K needs, per query, how many other-class items
are at least as close as its nearest same-class item. MAP@R and R-Precision need the positions of the
query's R same-class items among its neighbours, and those depend only on its R closest other-class items.
So, instead of sorting K or 1,000 neighbours per query as generic kNN search does:

1. Same-class distances are computed class by class (small matrices, batched by class size) and sorted.
2. One pass over blocks of the query × gallery distance matrix, with same-class entries masked out, keeps
   per query a count of other-class items at least as close as its nearest positive, and its R closest
   other-class distances (only those up to its farthest positive matter). In all-vs-all mode the matrix is
   symmetric: a block above the diagonal serves its rows and, transposed, its columns, which halves the
   arithmetic. Each block is one matrix product (the squared norms ride in it, see ``_Side``); on the CPU,
   large evaluations fold it into the queries' state with the compiled kernel of ``fold_kernel``.

Memory is O(block² + N·D + Σ R), never N × N. Items are reordered by (class size, class), so a query's
positives form one column range and queries with similar R share a block (the top-R buffer of a block is
padded only to that block's largest R). Ties between a positive and a negative count against the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from metrictransfer.errors import ConfigError
from metrictransfer.evaluation import screened
from metrictransfer.evaluation.screened import NORM_CHUNK, screen_precision

METRICS = ("euclidean", "cosine")
# CPU evaluations that compute at least this many distances (N²/2 all-vs-all, queries × gallery otherwise)
# are screened (screened.py) when their embeddings are float32, else fold their blocks with fold_kernel
# (numba); smaller ones run torch operations, as on the GPU. Loading the compiled kernels costs about 1 s
# per process; benchmarks/evaluation_scale.py measured the kernel 0.9 s slower at In-Shop's 1.8e8 and
# 7.8 s faster at SOP's 1.8e9.
FUSED_KERNEL_MIN_PAIRS = 1 << 28
_PAIR_BUDGET = 1 << 22  # same-class distances computed at once in step 1 (16 MB in float32)


@dataclass
class QueryStats:
    """Per-query results, in the order the queries were given.

    ``positives`` is R, the number of relevant items (same class, the query itself excluded); ``rank`` the
    number of other-class items at least as close as the nearest positive (-1 when R = 0);
    ``average_precision`` is AP@R and ``r_precision`` the fraction of positives in the top R (NaN when R = 0).
    """

    positives: torch.Tensor
    rank: torch.Tensor
    average_precision: torch.Tensor
    r_precision: torch.Tensor


def prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    """Embeddings in the working precision (float64 kept, anything else float32), unit length for cosine."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    x = x if x.dtype == torch.float64 else x.float()
    return F.normalize(x, dim=1) if metric == "cosine" else x


def centre(g: torch.Tensor) -> torch.Tensor:
    """A shift that the Euclidean paths subtract from both sides: the gallery's mean, coarsely rounded.

    |x|² + |y|² - 2x·y loses the digits of a large common offset to cancellation: items near 1,000 in every
    coordinate, 0.05 apart, got 194 of 200 ranks wrong in float32. A common shift changes no distance. The
    mean is rounded to a power of two about 1/32 of the items' spread: what is left of the offset is then
    too small to cancel anything, and data on a grid at least that coarse (small integers: exact ties) is
    shifted, squared and multiplied exactly, so its ties stay ties. Where an offset dominates, subtracting
    it is exact anyway (Sterbenz's lemma). Summed a chunk at a time in float64, with no float64 copy of the set.
    """
    total = torch.zeros(g.shape[1], dtype=torch.float64, device=g.device)
    squares = torch.zeros((), dtype=torch.float64, device=g.device)
    for s in range(0, len(g), NORM_CHUNK):
        chunk = g[s : s + NORM_CHUNK].double()
        total += chunk.sum(0)
        squares += chunk.pow(2).sum()
    n = max(1, len(g))
    mean = total / n
    spread = float((squares / n - mean.pow(2).sum()).clamp_min(0) / max(1, g.shape[1])) ** 0.5
    if not spread > 0:  # one item, or all equal: nothing to gain
        return torch.zeros_like(mean, dtype=g.dtype)
    step = 2.0 ** (math.floor(math.log2(spread)) - 5)
    return (mean / step).round().mul(step).to(g.dtype)


def pair_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None, b_sq: torch.Tensor | None) -> torch.Tensor:
    """A monotone stand-in for the distance (squared Euclidean, or minus the cosine similarity); batched.

    Only the order of distances matters to the metrics, so no square root and no constant offset.
    """
    prod = a @ b.transpose(-1, -2)
    if a_sq is None:
        return prod.neg_()
    if b_sq is None:
        raise ValueError("pair_distances: give both squared norms (squared Euclidean) or neither (cosine)")
    return prod.mul_(-2).add_(a_sq.unsqueeze(-1)).add_(b_sq.unsqueeze(-2))


def _ranges(sorted_labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of each class in a label-sorted array; empty (0, 0) for absent classes."""
    start = torch.zeros(num_classes, dtype=torch.long, device=sorted_labels.device)
    end = torch.zeros_like(start)
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    ends = counts.cumsum(0)
    start[classes], end[classes] = ends - counts, ends
    return start, end


class _Side:
    """Items of one side (queries or gallery) sorted so that classes are contiguous, as the operands of
    one matrix product per block: ``left[a] · right[b]`` is the distance stand-in of ``pair_distances``.

    For squared Euclidean, ``left = [x, |x|², 1]`` and ``right = [-2x, 1, |y|²]``: the norms are added
    inside the product, not in extra passes over every block (those cost more than the product on the CPU).
    """

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        sort_key: torch.Tensor,
        metric: str,
        shift: torch.Tensor | None,
        left: bool,
        right: bool,
    ):
        self.order = torch.sort(sort_key, stable=True).indices
        self.labels = labels[self.order]
        x = x[self.order]  # a copy: ``shift`` (``centre``) is subtracted in place, the caller's tensor untouched
        if shift is not None:
            x.sub_(shift)
        self.size, self.dtype = len(x), x.dtype
        self.x = None if left or right else x  # the screened path takes the plain embeddings
        if metric == "euclidean":
            sq, ones = x.pow(2).sum(1, keepdim=True), torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
            self.left = torch.cat([x, sq, ones], 1) if left else None
            self.right = torch.cat([x.mul(-2), ones, sq], 1) if right else None
        else:
            self.left = x.contiguous() if left else None
            self.right = x.neg() if right else None


def distances(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Distance stand-ins of (batched) ``_Side`` operands, written into ``out`` when it is given."""
    if out is not None:
        return torch.mm(left, right.t(), out=out)
    return left @ right.transpose(-1, -2)


def query_statistics(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    metric: str = "euclidean",
    block_size: int | None = None,
    progress: bool = False,
    fused_kernel: bool | None = None,
    screen: bool | None = None,
) -> QueryStats:
    """Exact retrieval statistics of every query.

    Without a gallery, all-vs-all: each item queries all others, excluded by its index. With a gallery,
    query-vs-gallery (the two sets must be disjoint). Runs on the device the embeddings are on; on the
    CPU, blocks are folded by the compiled kernel of ``fold_kernel`` when ``fused_kernel`` is True, or when
    it is None and there are at least :data:`FUSED_KERNEL_MIN_PAIRS` pairs; otherwise by the torch path,
    which the GPU uses. With ``screen`` (by default, float32 embeddings on a CPU for which
    ``screened.screen_precision`` names a precision, and at least :data:`FUSED_KERNEL_MIN_PAIRS` pairs),
    blocks are screened by a product in that precision (float32 when it names none) and entries decided
    in float64 (``screened.py``).
    """
    same_set = gallery is None
    device = queries.device
    q_all = prepare(queries, metric)
    g_all = q_all if gallery is None else prepare(gallery, metric).to(device)
    if gallery is None:
        all_labels = query_labels
    elif gallery_labels is None:
        raise ValueError("query_statistics: a gallery needs its gallery_labels")
    else:
        all_labels = torch.cat([query_labels, gallery_labels.to(query_labels.device)])
    _, compact = torch.unique(all_labels.to(device), return_inverse=True)
    num_classes = int(compact.max()) + 1
    q_lab, g_lab = (compact, compact) if same_set else (compact[: len(q_all)], compact[len(q_all) :])

    pairs_total = len(q_all) * len(g_all) // (2 if same_set else 1)
    if screen is None:
        screen = q_all.dtype == torch.float32 and pairs_total >= FUSED_KERNEL_MIN_PAIRS and screen_precision() is not None
    screen = screen and device.type == "cpu"
    # a common offset out: the float32 paths would lose digits to it, the screen's products their precision
    # (the screen decides in float64 from the given values)
    shift = centre(g_all) if metric == "euclidean" else None
    side_shift = None if screen else shift
    g_count = torch.bincount(g_lab, minlength=num_classes)
    operands = {"left": not screen, "right": not screen}
    if same_set:
        rows = cols = _Side(q_all, q_lab, g_count[q_lab] * num_classes + q_lab, metric, side_shift, **operands)
        q_pos = g_count[rows.labels] - 1
    else:
        cols = _Side(g_all, g_lab, g_lab, metric, side_shift, left=False, right=not screen)
        q_pos_unsorted = g_count[q_lab]
        rows = _Side(q_all, q_lab, q_pos_unsorted * num_classes + q_lab, metric, side_shift, **operands)
        q_pos = q_pos_unsorted[rows.order]
    g_start, g_end = _ranges(cols.labels, num_classes)

    offsets = torch.cumsum(q_pos, 0) - q_pos  # where each query's sorted positive distances start in `flat`
    block = block_size or (8192 if device.type == "cuda" else 2048)  # 2,048: the CPU's matrix product is at full speed
    starts = list(range(0, rows.size, block))
    col_starts = starts if same_set else list(range(0, cols.size, block))
    pairs = [(i, j) for i in range(len(starts)) for j in range(len(col_starts)) if not same_set or j >= i]
    lo, hi = g_start[rows.labels], g_end[rows.labels]
    if screen:
        assert rows.x is not None and cols.x is not None
        a, b = screened.operands(rows.x, cols.x, same_set, metric, screen_precision() or torch.float32, shift)
        flat = screened.positive_distances(a, b, lo, hi, offsets, q_pos, same_set)
    else:
        flat = _sorted_positive_distances(rows, cols, q_pos, offsets, num_classes, same_set)
    near, far, count, top_negatives = _initial_state(flat, offsets, q_pos, starts, block)
    if screen:
        screened.fold_blocks(a, b, same_set, lo, hi, pairs, starts, col_starts, block, (near, far, count, top_negatives), progress)
        return _finish(flat, offsets, q_pos, count, top_negatives, starts, block, rows.order)
    assert rows.left is not None and cols.right is not None  # queries are left operands, the gallery right ones
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    folder = None
    if fused_kernel is None:
        fused_kernel = pairs_total >= FUSED_KERNEL_MIN_PAIRS
    if device.type == "cpu" and fused_kernel:  # the kernel works in place on numpy views of the running state
        from metrictransfer.evaluation.fold_kernel import BlockFolder

        folder = BlockFolder(
            near.numpy(), far.numpy(), count.numpy(), [buffer.numpy() for buffer in top_negatives], torch.get_num_threads()
        )
    for i, j in tqdm(pairs, desc="kNN blocks", disable=not progress, leave=False):
        r0, c0 = starts[i], col_starts[j]
        r1, c1 = min(r0 + block, rows.size), min(c0 + block, cols.size)
        shape = (r1 - r0, c1 - c0)
        if shape not in outputs:  # written in place block after block: no fresh pages per block
            outputs[shape] = torch.empty(shape, dtype=rows.dtype, device=device)
        d = distances(rows.left[r0:r1], cols.right[c0:c1], outputs[shape])
        row_lo, row_hi = lo[r0:r1], hi[r0:r1]
        if bool(((row_lo < c1) & (row_hi > c0)).any()):  # this block holds same-class pairs: mask them
            col = torch.arange(c0, c1, device=device)
            d.masked_fill_((col >= row_lo.unsqueeze(1)) & (col < row_hi.unsqueeze(1)), float("inf"))
        if folder is not None:
            folder.fold(d.numpy(), r0, i, *((c0, j) if same_set and j != i else ()))
            continue
        _update(d, near[r0:r1], far[r0:r1], count, r0, top_negatives, i)
        if same_set and j != i:  # the transposed block is block (j, i), already masked by symmetry
            _update(d.t(), near[c0:c1], far[c0:c1], count, c0, top_negatives, j)

    if folder is not None:
        folder.close()
    return _finish(flat, offsets, q_pos, count, top_negatives, starts, block, rows.order)


def _initial_state(
    flat: torch.Tensor, offsets: torch.Tensor, q_pos: torch.Tensor, starts: list[int], block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Every query's running state before the blocks, in the precision of its positive distances ``flat``:
    nearest and farthest positive (-inf without one), a zero count, and per row block a buffer of its
    queries' closest other-class distances, padded with +inf to the block's largest R."""
    size, device = len(q_pos), flat.device
    has_pos = q_pos > 0
    near = torch.full((size,), float("-inf"), dtype=flat.dtype, device=device)
    far = torch.full_like(near, float("-inf"))
    near[has_pos] = flat[offsets[has_pos]]
    far[has_pos] = flat[offsets[has_pos] + q_pos[has_pos] - 1]
    count = torch.zeros(size, dtype=torch.long, device=device)
    buffers = [
        torch.full((min(block, size - s), int(q_pos[s : s + block].max())), float("inf"), dtype=flat.dtype, device=device) for s in starts
    ]
    return near, far, count, buffers


def _finish(
    flat: torch.Tensor,
    offsets: torch.Tensor,
    q_pos: torch.Tensor,
    count: torch.Tensor,
    top_negatives: list[torch.Tensor],
    starts: list[int],
    block: int,
    order: torch.Tensor,
) -> QueryStats:
    """Per-query statistics from the folded state, back in the order the queries were given."""
    device, size = q_pos.device, len(q_pos)
    ap = torch.full((size,), float("nan"), dtype=torch.float64, device=device)
    rp = torch.full_like(ap, float("nan"))
    for i, s in enumerate(starts):
        e = min(s + block, size)
        ap[s:e], rp[s:e] = _precision_at_r(flat, offsets[s:e], q_pos[s:e], top_negatives[i])
    rank = torch.where(q_pos > 0, count, torch.full_like(count, -1))

    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=device)
    return QueryStats(
        positives=q_pos[inverse].cpu(),
        rank=rank[inverse].cpu(),
        average_precision=ap[inverse].cpu(),
        r_precision=rp[inverse].cpu(),
    )


def _update(
    d: torch.Tensor, near: torch.Tensor, far: torch.Tensor, count: torch.Tensor, r0: int, top_negatives: list[torch.Tensor], i: int
) -> None:
    """Fold one block (rows = queries, same-class entries already +inf) into the rows' running state.

    Rows whose closest entry here lies beyond their farthest positive are skipped: nothing in this block
    can precede any of their positives. For a trained model that is most rows of most blocks.
    """
    rows = torch.nonzero(d.amin(1) <= far).squeeze(1)
    if len(rows) == 0:
        return
    if 2 * len(rows) < d.shape[0]:  # gather the few rows that matter; otherwise use the block as is
        d = d[rows]
    else:  # rows beyond their farthest positive gain a zero count and harmless buffer entries
        rows = torch.arange(d.shape[0], device=d.device)
    count[r0 + rows] += (d <= near[rows].unsqueeze(1)).sum(1, dtype=torch.int32)
    buffer = top_negatives[i]
    k = buffer.shape[1]
    if k:
        part = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=False).values
        buffer[rows] = torch.cat([buffer[rows], part], 1).topk(k, dim=1, largest=False, sorted=False).values


def _precision_at_r(
    flat: torch.Tensor, offsets: torch.Tensor, q_pos: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """AP@R and R-Precision of a block of queries from their sorted positive and closest negative distances.

    The j-th closest positive sits at position j + (number of negatives at least as close); it counts when
    that position is within the top R.
    """
    k = negatives.shape[1]
    has_pos = q_pos > 0
    if k == 0:
        nan = torch.full(q_pos.shape, float("nan"), dtype=torch.float64, device=q_pos.device)
        return nan, nan.clone()
    j = torch.arange(1, k + 1, device=q_pos.device)
    valid = j.unsqueeze(0) <= q_pos.unsqueeze(1)
    index = torch.where(valid, offsets.unsqueeze(1) + j - 1, torch.zeros_like(valid, dtype=torch.long))
    positives = flat[index].masked_fill(~valid, float("inf"))
    ahead = torch.searchsorted(negatives.sort(dim=1).values.contiguous(), positives.contiguous(), right=True)
    position = j.unsqueeze(0) + ahead
    counted = valid & (position <= q_pos.unsqueeze(1))
    r = q_pos.clamp(min=1).double()
    ap = (counted * (j.unsqueeze(0).double() / position)).sum(1) / r
    rp = counted.sum(1) / r
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=q_pos.device)
    return torch.where(has_pos, ap, nan), torch.where(has_pos, rp, nan)


def _sorted_positive_distances(
    rows: _Side, cols: _Side, q_pos: torch.Tensor, offsets: torch.Tensor, num_classes: int, same_set: bool
) -> torch.Tensor:
    """Every query's distances to its positives, sorted, concatenated in query order (query i at offsets[i])."""
    device = rows.labels.device
    assert rows.left is not None and cols.right is not None
    flat = torch.empty(int(q_pos.sum()), dtype=rows.dtype, device=device)
    q_start, q_end = _ranges(rows.labels, num_classes)
    g_start, g_end = _ranges(cols.labels, num_classes)
    nq, ng = q_end - q_start, g_end - g_start
    present = (nq > 0) & (ng > int(same_set))
    shapes = torch.stack([nq[present], ng[present]], 1)
    classes = torch.nonzero(present).squeeze(1)
    for shape in torch.unique(shapes, dim=0).tolist():
        members = classes[(shapes == torch.tensor(shape, device=device)).all(1)]
        n_q, n_g = shape
        rows_per_piece = max(1, min(n_q, _PAIR_BUDGET // n_g))
        per_piece = max(1, _PAIR_BUDGET // (n_q * n_g)) if rows_per_piece == n_q else 1
        for m0 in range(0, len(members), per_piece):
            group = members[m0 : m0 + per_piece]
            g_idx = g_start[group].unsqueeze(1) + torch.arange(n_g, device=device)
            for t0 in range(0, n_q, rows_per_piece):
                t = torch.arange(t0, min(t0 + rows_per_piece, n_q), device=device)
                q_idx = q_start[group].unsqueeze(1) + t
                d = distances(rows.left[q_idx], cols.right[g_idx])
                if same_set:  # the query itself (same sorted index on both sides)
                    d.masked_fill_(q_idx.unsqueeze(2) == g_idx.unsqueeze(1), float("inf"))
                r = n_g - int(same_set)
                values = d.sort(dim=2).values[..., :r]
                flat[(offsets[q_idx].unsqueeze(2) + torch.arange(r, device=device)).reshape(-1)] = values.reshape(-1)
    return flat
