"""Transfer between classifiers on the demo data: cross-entropy alone vs + relaxed contrastive vs + Hinton.

    .venv/bin/python -m benchmarks.classifier_transfer [--seeds 0] [--work runs/classifier_transfer]

The 70 training classes of glyphs, 20 % of each class's images held out (the same images for every run).
Teacher: ResNet-18-D classifier, 16 epochs. Students: ResNet-10t, 10 epochs, trained with cross-entropy
alone, plus the relaxed contrastive loss on the penultimate (pooled) features, or plus Hinton's logit
distillation (T = 4). Top-1 accuracy on the held-out images, final epoch. Finished runs are skipped when
the script runs again. Writes benchmarks/results/classifier_transfer.md and .json.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import mean_std, parser, train_once, write_results
from metrictransfer.demo import DEMO_DATA

DATA = {**DEMO_DATA, "views": 1, "holdout_images": 0.2}
TEACHER = {"backbone": "resnet18d", "epochs": 16}
STUDENTS = {
    "student, cross-entropy alone": {"distill": "none"},
    "student + relaxed contrastive (penultimate features)": {"distill": "relaxed_contrastive"},
    "student + Hinton distillation (T = 4)": {"distill": "hinton", "temperature": 4.0},
}


def config(backbone: str, epochs: int, seed: int, classifier: dict | None = None) -> dict:
    return {
        "method": "classifier",
        "seed": seed,
        "data": DATA,
        "model": {"backbone": backbone},
        "optim": {"lr": 1e-3, "epochs": epochs},
        "eval": {"every": 0},
        "classifier": classifier or {},
    }


def run(raw: dict, out: Path) -> dict:
    return train_once(raw, out, "classifier_transfer")


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0])
    options.add_argument("--work", default="runs/classifier_transfer")
    args = options.parse_args()
    work = Path(args.work)
    accuracy: dict[str, list[float]] = {}
    for seed in args.seeds:
        teacher_dir = work / f"seed{seed}" / "teacher"
        accuracy.setdefault("teacher (ResNet-18-D)", []).append(
            run(config(TEACHER["backbone"], TEACHER["epochs"], seed), teacher_dir)["final"]["accuracy"]
        )
        for name, classifier in STUDENTS.items():
            if classifier["distill"] != "none":
                classifier = {**classifier, "source_checkpoint": str(teacher_dir)}
            out = work / f"seed{seed}" / classifier["distill"]
            accuracy.setdefault(name, []).append(run(config("resnet10t", 10, seed, classifier), out)["final"]["accuracy"])

    lines = [
        f"# Classifier transfer on glyphs: top-1 accuracy (%) on held-out images, seeds {args.seeds}",
        "",
        "| model | accuracy |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {mean_std(values)} |" for name, values in accuracy.items()]
    rerun = f"classifier_transfer --seeds {' '.join(map(str, args.seeds))}"
    write_results("classifier_transfer", lines, {"args": vars(args), "accuracy": accuracy}, rerun=rerun)


if __name__ == "__main__":
    main()
