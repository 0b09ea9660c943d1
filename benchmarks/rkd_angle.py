"""RKD angle loss: time of one forward + backward pass, three implementations side by side (CPU).

    .venv/bin/python -m benchmarks.rkd_angle [--sizes 90 180 360 512] [--dim 128] [--repeats 5]

- naive: the original form, N × N × D normalised difference vectors, autograd (memory O(N²·D));
- checkpointed: cosines from Gram products in chunks of 32 anchors, each chunk recomputed in the
  backward pass by activation checkpointing (this project's implementation before the fused one);
- fused (ours): the same chunks, the gradient accumulated in the forward pass, each block built once;
  also with fixed chunk sizes, to show why the automatic size is 2¹⁸ cosines per block on CPU.

The three are checked to agree (loss and gradient) before timing; repeats are interleaved and the
median is reported. Writes benchmarks/results/rkd_angle.md and .json.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from benchmarks.common import parser, write_results
from metrictransfer.losses import RKDAngleLoss
from metrictransfer.losses.distances import pairwise_distances


def naive(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    def cosines(x):
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(e, e.transpose(1, 2))

    with torch.no_grad():
        target = cosines(s)
    return F.smooth_l1_loss(cosines(t), target)


def _chunk_cosines(anchors, gram, dist):
    g = gram[anchors]
    inner = gram.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + gram[anchors, anchors].view(-1, 1, 1)
    d = dist[anchors]
    nonzero = (d > 0).unsqueeze(2) & (d > 0).unsqueeze(1)
    return torch.where(nonzero, inner / (d.unsqueeze(2) * d.unsqueeze(1)).clamp(min=1e-24), torch.zeros_like(inner))


def checkpointed(t: torch.Tensor, s: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    def part(t_gram, t_dist, s_gram, s_dist, anchors):
        with torch.no_grad():
            source = _chunk_cosines(anchors, s_gram, s_dist)
        return F.smooth_l1_loss(_chunk_cosines(anchors, t_gram, t_dist), source, reduction="sum")

    n = len(t)
    with torch.no_grad():
        s_gram, s_dist = s @ s.t(), pairwise_distances(s)
    t_gram, t_dist = t @ t.t(), pairwise_distances(t)
    total = t.new_zeros(())
    for start in range(0, n, chunk):
        anchors = torch.arange(start, min(start + chunk, n))
        total = total + checkpoint(part, t_gram, t_dist, s_gram, s_dist, anchors, use_reentrant=False)
    return total / n**3


def seconds(fn, t: torch.Tensor, s: torch.Tensor) -> float:
    t.grad = None
    started = time.perf_counter()
    fn(t, s).backward()
    return time.perf_counter() - started


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--sizes", type=int, nargs="+", default=[90, 180, 360, 512])
    options.add_argument("--dim", type=int, default=128)
    options.add_argument("--repeats", type=int, default=5)
    options.add_argument("--threads", type=int, default=2)
    args = options.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        t = torch.randn(n, args.dim, generator=g, requires_grad=True)
        s = torch.randn(n, args.dim, generator=g)
        auto = RKDAngleLoss()
        methods = {
            "naive (N·N·D)": naive,
            "checkpointed, 32 anchors": checkpointed,
            f"fused, automatic ({auto.anchors_per_chunk(n, t.device)} anchors)": auto,
            **{f"fused, {c} anchors": RKDAngleLoss(chunk=c) for c in (1, 8, 32) if c < n},
        }
        reference = None
        for name, fn in methods.items():  # agreement first (also a warm-up)
            t.grad = None
            loss = fn(t, s)
            loss.backward()
            if reference is None:
                reference = (loss.item(), t.grad.clone())
            else:
                assert abs(loss.item() - reference[0]) <= 1e-5 * abs(reference[0]), (name, loss.item(), reference[0])
                torch.testing.assert_close(t.grad, reference[1], rtol=1e-3, atol=1e-9)
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                times[name].append(seconds(fn, t, s))
        naive_time = statistics.median(times["naive (N·N·D)"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append({"n": n, "method": name, "ms": 1000 * median, "vs_naive": median / naive_time})
        print("\n".join(f"N={r['n']} {r['method']}: {r['ms']:.1f} ms" for r in rows if r["n"] == n), flush=True)

    lines = [
        f"# RKD angle loss, forward + backward (D = {args.dim}, float32)",
        "",
        f"{args.threads} CPU threads; median of {args.repeats} "
        "interleaved repeats; all implementations agree on the loss and gradient before timing.",
        "",
        "| N | implementation | ms | time vs naive |",
        "|---:|---|---:|---:|",
    ]
    lines += [f"| {r['n']} | {r['method']} | {r['ms']:.1f} | {r['vs_naive']:.2f}× |" for r in rows]
    rerun = f"rkd_angle --sizes {' '.join(map(str, args.sizes))} --dim {args.dim} --repeats {args.repeats}"
    write_results("rkd_angle", lines, {"args": vars(args), "rows": rows}, rerun=rerun)


if __name__ == "__main__":
    main()
