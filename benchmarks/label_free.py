"""Label-free transfer on the demo data: does a self-supervised source help a target trained without labels?

    .venv/bin/python -m benchmarks.label_free [--seeds 0] [--epochs-scale 1.0] [--work runs/label_free]

No run reads a training label. Per seed:
1. source: ResNet-18-D 128-d trained self-supervised (NT-Xent between two views of each image),
2. target alone: ResNet-10t 32-d trained the same self-supervised way,
3. target by transfer: ResNet-10t 32-d trained by the relaxed contrastive loss alone from the source.
All three are evaluated by kNN Recall@K on the held-out glyph classes (final epoch). Finished runs in
``--work`` are skipped when the script runs again. Writes benchmarks/results/label_free.md and .json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import mean_std, parser, train_once, write_results
from metrictransfer.demo import DEMO_SOURCE, DEMO_TARGET


def configs(work: Path, seed: int, epochs_scale: float) -> dict[str, dict]:
    def make(base: dict, method: str, extra: dict | None = None) -> dict:
        raw = json.loads(json.dumps(base))
        raw.update({"method": method, "seed": seed, **(extra or {})})
        raw.pop("metric_loss", None)
        raw["optim"]["epochs"] = max(1, round(raw["optim"]["epochs"] * epochs_scale))
        raw["eval"] = {**raw["eval"], "every": 0}
        return raw

    source_dir = work / f"seed{seed}" / "source_selfsup"
    return {
        "source_selfsup": make(DEMO_SOURCE, "selfsup"),
        "target_selfsup": make(DEMO_TARGET, "selfsup"),
        "target_transfer": make(DEMO_TARGET, "transfer", {"transfer": {"source_checkpoint": str(source_dir)}}),
    }


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0])
    options.add_argument("--epochs-scale", type=float, default=1.0)
    options.add_argument("--work", default="runs/label_free")
    args = options.parse_args()

    work, started = Path(args.work), time.perf_counter()
    finals: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        for name, raw in configs(work, seed, args.epochs_scale).items():
            out = work / f"seed{seed}" / name
            result = train_once(raw, out, "label_free")
            finals.setdefault(name, {})[seed] = result["final"]
    ks = [k for k in next(iter(finals["source_selfsup"].values())) if k.startswith("recall@")]
    rows = {
        "source_selfsup": "source: ResNet-18-D 128-d, self-supervised",
        "target_selfsup": "target alone: ResNet-10t 32-d, self-supervised",
        "target_transfer": "target: ResNet-10t 32-d, relaxed contrastive from the source",
    }
    lines = [
        f"# Label-free transfer on glyphs: kNN Recall@K (%) on held-out classes, seeds {args.seeds}",
        "",
        "No run reads a training label. " + f"{(time.perf_counter() - started) / 60:.0f} min this time.",
        "",
        "| model | " + " | ".join(k.replace("recall@", "R@") for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for name, label in rows.items():
        lines.append(f"| {label} | " + " | ".join(mean_std([f[k] for f in finals[name].values()]) for k in ks) + " |")
    rerun = f"label_free --seeds {' '.join(map(str, args.seeds))}"
    write_results("label_free", lines, {"args": vars(args), "final": finals}, rerun=rerun)


if __name__ == "__main__":
    main()
