"""The demo's three models over several seeds: mean ± std Recall@K on the held-out glyph classes.

    .venv/bin/python -m benchmarks.demo_quality [--seeds 0 1 2] [--epochs-scale 1.0] [--work DIR]

Writes benchmarks/results/demo_quality.md (table) and demo_quality.json (every seed's numbers). The
figures are final-epoch values on the test split; no epoch or setting is chosen by looking at it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import mean_std, parser, write_results
from metrictransfer.demo import demo_configs, run_demo


def main() -> None:
    options = parser(__doc__, name="demo_quality")
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--epochs-scale", type=float, default=1.0)
    options.add_argument("--work", help="folder for the runs (default: a temporary folder)")
    args = options.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="demo_quality-"))
    per_seed: dict[int, dict] = {}
    for seed in args.seeds:
        started = time.perf_counter()
        summary = run_demo(
            work / f"seed{seed}", seed=seed, epochs_scale=args.epochs_scale, progress=False, overwrite=True
        )  # the benchmark's own folder: a rerun measures afresh
        per_seed[seed] = {"seconds": round(time.perf_counter() - started, 1), "models": summary["models"]}

    configs = demo_configs(work, epochs_scale=args.epochs_scale)
    models = list(configs)
    ks = [k for k in per_seed[args.seeds[0]]["models"][models[0]] if k.startswith("recall@")]
    lines = [
        f"# Demo quality: final-epoch Recall@K (%) on the held-out glyph classes, mean ± std over seeds {args.seeds}",
        "",
        "| model | method | backbone | dim | epochs | " + " | ".join(k.replace("recall", "R") for k in ks) + " |",
        "|---|---|---|---|---|" + "---|" * len(ks),
    ]
    for name in models:
        c = configs[name]
        cells = [mean_std([per_seed[s]["models"][name][k] for s in args.seeds]) for k in ks]
        lines.append(
            f"| {name} | {c.method} | {c.model.backbone} | {c.model.embedding_dim} | {c.optim.epochs} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Per seed Recall@1 (%) and wall time of the whole demo:",
        "",
        "| seed | " + " | ".join(models) + " | seconds |",
        "|---|" + "---|" * (len(models) + 1),
    ]
    for s in args.seeds:
        lines.append(
            f"| {s} | " + " | ".join(f"{100 * per_seed[s]['models'][m]['recall@1']:.1f}" for m in models) + f" | {per_seed[s]['seconds']} |"
        )
    record = {
        "seeds": args.seeds,
        "epochs_scale": args.epochs_scale,
        "per_seed": per_seed,
        "configs": {n: c.model_dump(mode="json") for n, c in configs.items()},
    }
    rerun = f"demo_quality --seeds {' '.join(map(str, args.seeds))} --epochs-scale {args.epochs_scale}"
    write_results(args.name, lines, record, rerun=rerun)


if __name__ == "__main__":
    main()
