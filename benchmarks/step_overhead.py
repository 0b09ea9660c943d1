"""What a transfer step and a cohort step cost beyond the networks' own work (demo data, CPU).

    .venv/bin/python -m benchmarks.step_overhead [--steps 10] [--rounds 5] [--precision 32]

On one preloaded demo batch (45 classes × 2 images × 2 views = 180 images, 32 px), measured side by side
in one process, interleaved round by round, median over rounds:

- transfer step (the demo's compression setting: ResNet-18-D 128-d source, ResNet-10t 32-d target,
  relaxed contrastive loss): the method's loss (source forward in inference mode, target forward, loss),
  backward and the optimiser update, exactly as the trainer runs them;
- against: the target's forward + backward alone (its embeddings' sum as the loss) plus the source's
  forward alone (inference mode). The overhead is the loss, its backward and the update.
- cohort step (K = 2 ResNet-10t 32-d members, their own views, triplet + mutual loss, τ = 1, 1)
  against two standalone steps of the same members (triplet loss alone), each on its own views; with
  the default mutual loss (RKD: its angle term is O(N³) work per ordered pair) and with the relaxed
  contrastive loss (O(N²)).

The goal (issue 7): both ratios at most 1.10. Data loading is left out of every timing (it is the same
for all and measured in benchmarks/cohort_step.py). Writes benchmarks/results/step_overhead.md and .json.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Stepper, parser, write_results
from metrictransfer.config import build_config
from metrictransfer.demo import DEMO_DATA
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import save_embedding_model

TRIPLET = {"name": "triplet", "params": {"margin": 0.2}, "miner": "distance_weighted"}


def save_source(path: Path) -> Path:
    """An (untrained) ResNet-18-D 128-d source checkpoint: the timing does not depend on its weights."""
    raw = {"model": {"backbone": "resnet18d", "embedding_dim": 128}}
    return save_embedding_model(EmbeddingModel("resnet18d", 128), build_config(raw), path)


class Step(Stepper):
    """A method and its updater on one preloaded batch: ``run()`` is one training step without loading."""

    def __init__(self, raw: dict) -> None:
        super().__init__(raw, "step_overhead")
        self.images, self.labels, self.indices = self.next_batch()

    def run(self) -> None:
        self.update(self.images, self.labels, self.indices)


class Networks:
    """The networks' own work: a forward + backward of trained models, a forward of frozen ones."""

    def __init__(self, trained: list[torch.nn.Module], frozen: list[torch.nn.Module], images: list[torch.Tensor]) -> None:
        self.trained, self.frozen, self.images = trained, frozen, images

    def run(self) -> None:
        for model, x in zip(self.trained, self.images):
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        with torch.inference_mode():
            for model in self.frozen:
                model(self.images[0])


def timed(fn, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--steps", type=int, default=10, help="timed steps per round and setting")
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--precision", default="32", choices=["32", "bf16"])
    options.add_argument("--threads", type=int, default=2)
    options.add_argument("--backbone", default="resnet10t", help="the target's and the cohort members' backbone")
    args = options.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        base = {"data": DEMO_DATA, "optim": {"lr": 1e-3, "epochs": 10}, "precision": args.precision}
        transfer = Step(
            {
                **base,
                "method": "transfer",
                "model": {"backbone": args.backbone, "embedding_dim": 32},
                "transfer": {"source_checkpoint": str(save_source(Path(tmp) / "source.pt"))},
            }
        )
        cohorts = {
            loss: Step(
                {
                    **base,
                    "method": "mutual",
                    "metric_loss": TRIPLET,
                    "model": {"backbone": args.backbone, "embedding_dim": 32, "normalize": True},
                    "mutual": {"members": 2, "update_every": [1, 1], "loss": loss},
                }
            )
            for loss in ("rkd", "relaxed_contrastive")
        }
    cohort = cohorts["rkd"]
    member_views = cohort.method.split_views(cohort.images)
    alone = []
    for k in range(2):
        member = Step(
            {
                **base,
                "method": "source",
                "metric_loss": TRIPLET,
                "seed": k,
                "model": {"backbone": args.backbone, "embedding_dim": 32, "normalize": True},
            }
        )
        # exactly the member's share of the cohort's batch: its own views, the same labels and indices
        member.images = member_views[k]
        member.labels = cohort.method.split_views(cohort.labels)[k]
        member.indices = cohort.method.split_views(cohort.indices)[k]
        alone.append(member)
    networks = Networks([transfer.method.target], [transfer.method.source], [transfer.images])

    settings = {
        "transfer step": transfer.run,
        "target forward + backward, source forward": networks.run,
        "cohort step (K = 2), RKD mutual loss": cohorts["rkd"].run,
        "cohort step (K = 2), relaxed contrastive mutual loss": cohorts["relaxed_contrastive"].run,
        "member 0 alone": alone[0].run,
        "member 1 alone": alone[1].run,
    }
    for fn in settings.values():  # warm-up: allocator, lazy initialisation
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in settings}
    for round_ in range(args.rounds):
        for name, fn in settings.items():
            times[name].append(timed(fn, args.steps))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    transfer_ratio = median["transfer step"] / median["target forward + backward, source forward"]
    members = median["member 0 alone"] + median["member 1 alone"]
    cohort_ratio = median["cohort step (K = 2), RKD mutual loss"] / members
    relaxed_ratio = median["cohort step (K = 2), relaxed contrastive mutual loss"] / members
    lines = [
        f"# Step overhead: transfer and cohort steps against the networks' own work (CPU, {args.backbone}, precision {args.precision})",
        "",
        f"One preloaded demo batch (180 images, 32 px); median over {args.rounds} interleaved rounds of {args.steps} steps.",
        "",
        "| setting | seconds per step |",
        "|---|---:|",
        *[f"| {name} | {seconds:.3f} |" for name, seconds in median.items()],
        "",
        f"- transfer step ÷ (target forward + backward + source forward): **{transfer_ratio:.2f}** (goal ≤ 1.10)",
        f"- cohort step ÷ (member 0 alone + member 1 alone), RKD (the default): **{cohort_ratio:.2f}**; "
        f"relaxed contrastive: **{relaxed_ratio:.2f}** (goal ≤ 1.10)",
    ]
    name = (
        "step_overhead"
        + ("" if args.precision == "32" else f"_{args.precision}")
        + ("" if args.backbone == "resnet10t" else f"_{args.backbone}")
    )
    record = {
        "args": vars(args),
        "seconds": times,
        "median": median,
        "transfer_ratio": transfer_ratio,
        "cohort_ratio": cohort_ratio,
        "relaxed_cohort_ratio": relaxed_ratio,
    }
    rerun = (
        f"step_overhead --steps {args.steps} --rounds {args.rounds} --precision {args.precision} --threads {args.threads} "
        f"--backbone {args.backbone}"
    )
    write_results(name, lines, record, rerun=rerun)


if __name__ == "__main__":
    main()
