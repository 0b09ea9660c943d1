"""Distilling a foundation-style teacher into the demo's small target on unlabelled images: which loss?

    .venv/bin/python -m benchmarks.foundation_distill [--seeds 0 1 2] [--epochs-scale 1.0] [--work runs/foundation_distill]

No pretrained weights can be downloaded here, so a stand-in plays the foundation model (DINOv2, CLIP, ...):

* **Teacher**: ResNet-18-D (11 M parameters, twice the target's), trained self-supervised (NT-Xent between
  two views of each image, no label read) on *broad* data that includes the task's domain: every one of
  the 140 glyph classes, the held-out test classes too, rendered with another data seed (glyph_seed 1),
  so it never saw the evaluation images themselves. That is the position of a foundation model: large,
  trained without the task's labels on data that covers the domain. It is read as any timm model through
  ``transfer.source`` (``features: avg_max`` of its backbone, 512-d, no head of ours): its weights file is
  a plain timm state dict.
* **Target**: the demo's ResNet-10t with a 32-d head, trained 10 epochs × ``--epochs-scale`` on the glyph training split's
  images *without their labels* (label-free batches), from the teacher with each transfer loss.
* **References**: the teacher itself (its 512-d features), and the target trained alone *with* the
  training labels (the demo's target_alone: Proxy-Anchor).

Everything is evaluated once, at the final epoch, by kNN Recall@K on the held-out glyph classes (no epoch
or setting is chosen on them). Also times one training step per loss (median of 10 rounds in which the losses
take turns, one process, after 3 warm-up steps each). Finished runs in ``--work`` are reused.
Writes benchmarks/results/foundation_distill.md
and .json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import RESULTS, Stepper, mean_std, parser, train_once, write_results
from benchmarks.tuned import CLIP  # the clipping norm's range, as the transfer table's
from metrictransfer.demo import DEMO_DATA, DEMO_TARGET

TEACHER_EPOCHS = 10
# The transfer losses compared, with the parameters each is run with (no tuning: the defaults, or the
# demo's settings for relaxed contrastive).
LOSSES = {
    "relaxed_contrastive": {"name": "relaxed_contrastive", "params": {"sigma": 1.0, "delta": 1.0}},
    "proj_cosine": {"name": "proj_cosine"},
    "proj_mse": {"name": "proj_mse"},
    "queue_distill": {"name": "queue_distill", "params": {"queue_size": 1024}},
    "rkd": {"name": "rkd"},
    "rkd_clipped": {"name": "rkd"},  # with the gradients' norm clipped (OPTIM): RKD diverged on a seed here
    "pkt": {"name": "pkt"},
    "relaxed_ms": {"name": "relaxed_ms", "params": {"sigma": 1.0, "delta": 1.0}},
}
LABELS = {
    "relaxed_contrastive": "relaxed contrastive (Kim et al. 2021)",
    "proj_cosine": "feature regression, cosine, learned linear projector",
    "proj_mse": "feature regression, MSE on L2-normalised features, learned linear projector",
    "queue_distill": "pseudo-classifier over a queue of teacher features (LightlyTrain distillation v1 style)",
    "rkd": "RKD distance + angle",
    "rkd_clipped": "RKD distance + angle, gradients' norm clipped",
    "pkt": "PKT",
    "relaxed_ms": "relaxed multi-similarity (the relaxed loss authors' repository)",
}
LR = {"optim.lr": {"type": "log_uniform", "low": 1.0e-4, "high": 1.0e-2}}
WEIGHT_DECAY = {"optim.weight_decay": {"type": "log_uniform", "low": 1.0e-6, "high": 1.0e-2}}
SIGMA = {"transfer.loss.params.sigma": {"type": "float", "low": 0.5, "high": 2.0}}
# --tuned: the learning rate and one setting of each loss's own (the weight decay for those without one)
SPACES = {
    "relaxed_contrastive": {**LR, **SIGMA},
    "proj_cosine": {**LR, **WEIGHT_DECAY},
    "proj_mse": {**LR, **WEIGHT_DECAY},
    "queue_distill": {**LR, "transfer.loss.params.teacher_temperature": {"type": "log_uniform", "low": 0.02, "high": 0.2}},
    "rkd": {**LR, "transfer.loss.params.angle_weight": {"type": "float", "low": 0.5, "high": 4.0}},
    "rkd_clipped": {**LR, **CLIP},
    "pkt": {**LR, **WEIGHT_DECAY},
    "relaxed_ms": {**LR, **SIGMA},
}
# settings of the optim block beside a loss (0.1: what stopped the divergence in benchmarks/rkd_divergence.py)
OPTIM = {"rkd_clipped": {"grad_clip": 0.1}}


def teacher_images(folder: Path) -> Path:
    """Every glyph class (train and test classes) rendered with data seed 1, as an unlabelled folder of PNGs."""
    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset

    done = folder / ".complete"
    if done.is_file():
        return folder
    data = build_config({"data": {"dataset": "glyphs", "glyph_seed": 1}}).data
    for split in ("train", "test"):
        dataset = build_dataset(data, split)
        for i in range(len(dataset)):
            image, _ = dataset[i]
            path = folder / split / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
    done.write_text("")
    return folder


def teacher_config(images: Path, epochs: int) -> dict:
    return {
        "method": "selfsup",
        "name": "teacher",
        "seed": 0,
        "data": {**DEMO_DATA, "dataset": "unlabelled", "root": str(images)},
        "model": {"backbone": "resnet18d", "embedding_dim": 128, "normalize": True},
        "optim": {"lr": 1e-3, "epochs": epochs},
        # evaluated once, at the end, only to report it (the student's test classes): nothing is chosen on it
        "eval": {"data": {**DEMO_DATA}, "every": 0, "recall_at": [1, 2, 4, 8]},
    }


def export_backbone(run: Path, out: Path) -> Path:
    """The teacher's backbone as a plain timm state dict: what a user would download for a foundation model."""
    from metrictransfer.runtime.checkpoint import load_embedding_model

    if not out.is_file():
        model, _ = load_embedding_model(run)
        torch.save(model.backbone.state_dict(), out)
    return out


def source_section(weights: Path) -> dict:
    return {"name": "resnet18d", "weights": str(weights), "features": "avg_max", "image_size": 32, "normalization": "imagenet"}


def student_config(loss: str, weights: Path, seed: int, epochs_scale: float) -> dict:
    raw = json.loads(json.dumps(DEMO_TARGET))
    raw.pop("metric_loss")
    raw.update({"method": "transfer", "name": loss, "seed": seed})
    raw["optim"] = {**raw["optim"], **OPTIM.get(loss, {})}
    raw["optim"]["epochs"] = max(1, round(raw["optim"]["epochs"] * epochs_scale))
    raw["eval"] = {**raw["eval"], "every": 0}
    raw["transfer"] = {"source": source_section(weights), "loss": LOSSES[loss]}
    return raw


def alone_config(seed: int, epochs_scale: float) -> dict:
    raw = json.loads(json.dumps(DEMO_TARGET))
    raw.update({"method": "source", "name": "target_alone", "seed": seed})
    raw["optim"]["epochs"] = max(1, round(raw["optim"]["epochs"] * epochs_scale))
    raw["eval"] = {**raw["eval"], "every": 0}
    return raw


def teacher_recall(weights: Path) -> dict[str, float]:
    """Recall@K of the teacher's own features (as the students see them) on the held-out classes."""
    from metrictransfer.config import build_config
    from metrictransfer.evaluation.evaluate import evaluate_model, test_dataset
    from metrictransfer.models.pretrained import PretrainedFeatures

    config = build_config({"data": DEMO_DATA, "eval": {"recall_at": [1, 2, 4, 8]}})
    model = PretrainedFeatures("resnet18d", pretrained=False, weights=weights, features="avg_max", image_size=32)
    return evaluate_model(model, test_dataset(config), config, torch.device("cpu"))


def target_signal(weights: Path, sigmas: list[float], temperatures: list[float], batch: int = 90, queue: int = 1024) -> dict:
    """How much class information each loss's targets carry, from the teacher's features of the training
    split's images (labels read only to measure): per image, the share of its target weight that falls on
    images of its own class. Relaxed losses: ``w_ij = exp(-||ŝ_i - ŝ_j||² / σ)`` over a random label-free
    batch of ``batch`` images; the queue loss: ``softmax(ŝ_i · Qᵀ / τ)`` over ``queue`` other images. Chance
    (weights that ignore the teacher) is the same-class share of the batch or queue."""
    import torch.nn.functional as F

    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset
    from metrictransfer.evaluation.embed import extract_embeddings
    from metrictransfer.evaluation.evaluate import with_test_transform
    from metrictransfer.models.pretrained import PretrainedFeatures

    data = build_config({"data": DEMO_DATA}).data
    model = PretrainedFeatures("resnet18d", pretrained=False, weights=weights, features="avg_max", image_size=32)
    features, labels = extract_embeddings(model, with_test_transform(build_dataset(data, "train"), data))[:2]
    features = F.normalize(features, dim=1)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
    rows: dict = {}

    def share(w: torch.Tensor, same: torch.Tensor) -> float:
        return float(((w * same).sum(1) / w.sum(1)).mean())

    batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    for sigma in sigmas:
        values, chance = [], []
        for b in batches:
            f, y = features[b], labels[b]
            w = torch.exp(-torch.cdist(f, f).pow(2) / sigma).fill_diagonal_(0)
            same = (y[:, None] == y[None, :]).float().fill_diagonal_(0)
            values.append(share(w, same))
            chance.append(share(torch.ones_like(w).fill_diagonal_(0), same))
        rows[f"relaxed, σ = {sigma:.3g}"] = {"share": statistics.mean(values), "chance": statistics.mean(chance), "set": batch}
    queued, rest = order[:queue], order[queue:]
    same = (labels[rest][:, None] == labels[queued][None, :]).float()
    for tau in temperatures:
        w = torch.softmax(features[rest] @ features[queued].t() / tau, dim=1)
        rows[f"queue, τ = {tau:.3g}"] = {"share": share(w, same), "chance": share(torch.ones_like(w), same), "set": queue}
    return rows


def step_seconds(weights: Path, rounds: int = 10, warmup: int = 3) -> dict[str, float]:
    """Median seconds of one training step (teacher forward, loss, backward, update) per loss, on one batch
    each; the losses take turns within each round, so machine noise falls on all of them alike."""
    steppers = {loss: Stepper(student_config(loss, weights, 0, 1.0), origin=f"foundation_distill step {loss}") for loss in LOSSES}
    batches = {loss: stepper.next_batch() for loss, stepper in steppers.items()}
    for loss, stepper in steppers.items():
        for _ in range(warmup):
            stepper.update(*batches[loss])
    times: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    for _ in range(rounds):
        for loss, stepper in steppers.items():
            started = time.perf_counter()
            stepper.update(*batches[loss])
            times[loss].append(time.perf_counter() - started)
    return {loss: statistics.median(values) for loss, values in times.items()}


def run_tuned(args, work: Path, weights: Path, started: float) -> None:
    """Each loss tuned as the transfer table's columns are (benchmarks/tuned.py: its learning rate and one
    setting of its own, on 20 % of the training classes held out, the transfer on the other 80 % without
    labels), its best values trained over the seeds on all training images and read once on the test
    classes; and whether its short trials predict full-length runs (``trial_vs_final``)."""
    from benchmarks.tuned import VALIDATION, as_component, chosen_run, plot_curves, shown, study_counts, trial_vs_final, tune_method
    from metrictransfer.config import apply_overrides

    untuned_file = RESULTS / "foundation_distill.json"
    untuned = json.loads(untuned_file.read_text())["final"] if untuned_file.is_file() else {}
    earlier_file = RESULTS / f"foundation_distill_{args.tuned_name}.json"
    earlier = json.loads(earlier_file.read_text()) if earlier_file.is_file() else {}
    results: dict = {"args": vars(args), **{key: earlier[key] for key in KEPT if key in earlier}}
    results.setdefault("losses", {})
    for row in results["losses"].values():  # rows from before teachers were recorded per row
        row.setdefault("teacher_r1", earlier.get("teacher_r1", "?"))
    final_epochs = max(1, round(10 * args.epochs_scale))
    results["teacher_r1"] = f"{100 * json.loads((work.parent / 'teacher' / 'results.json').read_text())['final']['recall@1']:.1f}"
    if untuned_file.is_file():
        results["untuned_teacher_r1"] = f"{100 * json.loads(untuned_file.read_text())['teacher_head']['recall@1']:.1f}"
    for loss in args.losses:
        trial = as_component(student_config(loss, weights, 0, 1.0))
        trial["data"] = {**trial["data"], "validation": VALIDATION}
        trial["optim"]["epochs"] = args.trial_epochs
        trial["eval"] = {**trial["eval"], "every": 1}  # a validation value per epoch, for the pruner
        study = work / "studies" / loss
        best = tune_method(loss, trial, study, args.trials, 0, SPACES[loss])
        finals = {}
        for seed in args.seeds:
            raw = as_component(student_config(loss, weights, seed, args.epochs_scale))
            raw = apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in best.items()])
            finals[seed] = train_once(raw, work / f"seed{seed}" / loss, "foundation_distill --tuned")["final"]
        check = trial_vs_final(study, SPACES[loss], final_epochs, work / "trial_vs_final" / loss, "foundation_distill --tuned")
        results["losses"][loss] = {
            "best": best,
            "study": study_counts(study),
            "tuned": finals,
            "untuned": untuned.get(loss, {}),
            "trial_vs_final": check,
            "teacher_r1": results["teacher_r1"],
        }
        write_tuned_table(args, results, (time.perf_counter() - started) / 60, shown)
    # the seeded studies' start-up draws are shared, so every loss chose its setting at the same place of its
    # range: vary it alone at the chosen learning rate (validation classes, full length), as
    # transfer_table --trial-check does; the best such change, if it beats every chosen recipe there, is
    # trained over the seeds and read once on the test split
    # losses tuned in another work folder (from another teacher) keep their earlier entries
    checked = [loss for loss in results["losses"] if (work / "studies" / f"{loss}.recipe.yaml").is_file()]
    results["sigma_check"] = {name: value for name, value in results.get("sigma_check", {}).items() if name.split(", ")[0] not in checked}
    changes = {}
    for loss in checked:
        recipe = yaml.safe_load((work / "studies" / f"{loss}.recipe.yaml").read_text())
        recipe["optim"]["epochs"] = final_epochs
        for key, (short, tried) in ALONE.items():
            if key not in SPACES[loss]:
                continue
            for value in tried:
                values = {**results["losses"][loss]["best"], key: value}
                raw = apply_overrides(json.loads(json.dumps(recipe)), [f"{k}={json.dumps(v)}" for k, v in values.items()])
                result = train_once(raw, work / "sigma_check" / f"{loss}_{short}{value:g}", "foundation_distill --tuned")
                name = f"{loss}, {key.split('.')[-1].replace('sigma', 'σ').replace('teacher_temperature', 'τ')} = {value:g}"
                results["sigma_check"][name] = result["validation"]["final"]["recall@1"]
                changes[name] = (loss, values)
    chosen_best = max(chosen_run(row["trial_vs_final"])["final_value"] for row in results["losses"].values())
    best_change = max(results["sigma_check"], key=results["sigma_check"].get, default=None)
    kept_change = earlier.get("best_change") or {}
    if not best_change or results["sigma_check"][best_change] <= chosen_best:
        results["best_change"] = None
    elif best_change not in changes:  # an earlier invocation's change, from its teacher: keep its finals
        results["best_change"] = kept_change if kept_change.get("name") == best_change else None
    else:
        loss, values = changes[best_change]
        finals = {}
        for seed in args.seeds:
            raw = apply_overrides(
                as_component(student_config(loss, weights, seed, args.epochs_scale)), [f"{k}={json.dumps(v)}" for k, v in values.items()]
            )
            folder = work / f"seed{seed}" / f"{loss}_{best_change.split(', ')[1].replace(' ', '')}"
            finals[seed] = train_once(raw, folder, "foundation_distill --tuned")["final"]
        results["best_change"] = {
            "name": best_change,
            "validation": results["sigma_check"][best_change],
            "chosen_best": chosen_best,
            "tuned": finals,
        }
    chosen = [row["best"] for row in results["losses"].values()]
    sigmas = sorted({1.0, *ALONE["transfer.loss.params.sigma"][1]} | {b[key] for b in chosen for key in b if key.endswith(".sigma")})
    temperatures = sorted({0.07} | {b[key] for b in chosen for key in b if key.endswith(".teacher_temperature")})
    if not results.get("target_signal"):  # a property of the teacher the relaxed and queue rows distilled from
        results["target_signal"] = target_signal(weights, sigmas, temperatures)
    write_tuned_table(args, results, (time.perf_counter() - started) / 60, shown)
    ranked = sorted(results["losses"], key=lambda name: -statistics.mean(r["recall@1"] for r in results["losses"][name]["tuned"].values()))
    plot_curves(
        {LABELS[name].split(" (")[0]: chosen_run(results["losses"][name]["trial_vs_final"])["curve"] for name in ranked[:3]},
        figure_path(args),
        "Foundation-style distillation, tuned: validation R@1 per epoch (best trial's values, full length)",
    )


def figure_path(args) -> Path:
    return Path(f"docs/benchmarks/figures/foundation_distill_{args.tuned_name}.png")


# what an invocation of --tuned keeps of the earlier results: the rows of losses it does not tune again, and
# the checks of losses tuned in another work folder
KEPT = ("losses", "sigma_check", "best_change", "target_signal")
# a loss's own setting varied alone: (short name for run folders, values tried)
ALONE = {"transfer.loss.params.sigma": ("sigma", [0.5, 1.0]), "transfer.loss.params.teacher_temperature": ("tau", [0.04, 0.1])}


def write_tuned_table(args, results: dict, minutes: float, shown) -> None:
    from benchmarks.tuned import chosen_run

    lines = [
        f"# Foundation-style distillation, every loss tuned alike on validation classes: kNN Recall@1 (%), seeds {args.seeds}",
        "",
        f"Budget per loss: {args.trials} TPE trials of {args.trial_epochs} epochs (median pruning): the transfer on 80 % of the "
        "training classes' images without labels, chosen by Recall@1 on the other 20 %. The best values then train as the "
        f"untuned runs do ({max(1, round(10 * args.epochs_scale))} epochs, all training images, no labels); test classes read once "
        "per run, at its end. Trial → final: each complete trial's values trained again at the final length on the same "
        "validation split; Spearman's ρ between the trial values and those final validation values (n trials), and the "
        "validation R@1 lost by picking the best trial instead of the best final.",
        "",
        "| loss | untuned R@1 | tuned R@1 | tuned R@2 | best values | trials complete / pruned | trial → final ρ (n) | regret (points) "
        "| teacher's R@1 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, row in results["losses"].items():
        tuned, before = list(row["tuned"].values()), [r["recall@1"] for r in row["untuned"].values()]
        values = ", ".join(f"{key.split('.')[-1]} {shown(value)}" for key, value in row["best"].items())
        check = row["trial_vs_final"]
        rho = "–" if check["spearman"] is None else f"{check['spearman']:.2f}"
        lines.append(
            f"| {LABELS[name]} | {mean_std(before) if before else '–'} | {mean_std([r['recall@1'] for r in tuned])} | "
            f"{mean_std([r['recall@2'] for r in tuned])} | {values} | {row['study']['complete']} / {row['study']['pruned']} | "
            f"{rho} ({len(check['runs'])}) | {100 * check['regret']:.1f} | {row['teacher_r1']} |"
        )
    if results.get("sigma_check"):
        lines += [
            "",
            "## σ and τ varied alone (validation R@1, at the chosen learning rate, full length, seed 0)",
            "",
            "| run | validation R@1 |",
            "|---|---:|",
        ]
        for name, row in results["losses"].items():
            chosen = chosen_run(row["trial_vs_final"])
            lines.append(f"| {name}, chosen values | {100 * chosen['final_value']:.1f} |")
        lines += [f"| {name} | {100 * value:.1f} |" for name, value in results["sigma_check"].items()]
        best = results.get("best_change")
        if best:
            tuned = [r["recall@1"] for r in best["tuned"].values()]
            lines += [
                "",
                f"The best change, {best['name']} ({100 * best['validation']:.1f} on validation against "
                f"{100 * best['chosen_best']:.1f} for the best chosen recipe), trained over the seeds and read once on the "
                f"test classes: R@1 {mean_std(tuned)}, R@2 {mean_std([r['recall@2'] for r in best['tuned'].values()])}. "
                "One choice beyond the equal budget, made on validation classes.",
            ]
    if results.get("target_signal"):
        lines += [
            "",
            "## How much class information each loss's targets carry",
            "",
            "The teacher's features of the training images (labels read only here): per image, the share of its target weight on "
            "images of its own class. Relaxed losses: exp(−‖ŝᵢ − ŝⱼ‖²/σ) over a random batch of 90 images; queue loss: the "
            "softmax of its pseudo-labels at temperature τ over 1,024 queued images. Chance: the same-class share of the batch "
            "or queue (weights that ignore the teacher).",
            "",
            "| targets | same-class share | chance | × chance |",
            "|---|---:|---:|---:|",
        ]
        for name, row in results["target_signal"].items():
            lines.append(f"| {name} | {100 * row['share']:.1f} % | {100 * row['chance']:.1f} % | {row['share'] / row['chance']:.1f} |")
    lines += [
        "",
        "Teacher's R@1: the recall of the trained head of the teacher each row distilled from; the teacher is retrained "
        "with the same recipe and seed when its work folder is gone, and the rows tuned in another session distilled from "
        "that session's teacher (the σ/τ checks, the best change and the target signal come from the relaxed and queue "
        "rows' teacher). Untuned: benchmarks/results/foundation_distill.json (the same seeds and length, each loss's "
        f"defaults), from a teacher trained with the same recipe whose head's R@1 was {results.get('untuned_teacher_r1', '?')}.",
        f"Figure: {figure_path(args)} (validation R@1 per epoch of the top three, at their chosen values).",
        "",
        f"{minutes:.0f} min in this invocation; finished runs and studies in --work are reused.",
    ]
    rerun = (
        f"foundation_distill --tuned --losses {' '.join(results['losses'])} --seeds {' '.join(map(str, args.seeds))} "
        f"--epochs-scale {args.epochs_scale} --teacher-epochs {args.teacher_epochs} "
        f"--trials {args.trials} --trial-epochs {args.trial_epochs}"
    )
    if args.tuned_name != "tuned":
        rerun += f" --tuned-name {args.tuned_name}"
    write_results(f"foundation_distill_{args.tuned_name}", lines, results, rerun=rerun)


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--epochs-scale", type=float, default=1.0, help="of the targets' 10 epochs")
    options.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    options.add_argument("--work", default="runs/foundation_distill")
    options.add_argument("--tuned", action="store_true", help="tune each loss alike on validation classes first (benchmarks/tuned.py)")
    options.add_argument("--trials", type=int, default=6, help="--tuned: trials per loss")
    options.add_argument("--trial-epochs", type=int, default=3, help="--tuned: epochs of a trial")
    options.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES), help="--tuned: these losses, in this order")
    options.add_argument(
        "--tuned-name",
        default="tuned",
        help="--tuned: the work subfolder and the results' name (foundation_distill_NAME): another budget beside the table's",
    )
    args = options.parse_args()

    work, started = Path(args.work), time.perf_counter()
    images = teacher_images(work / "teacher_images")
    teacher = train_once(teacher_config(images, args.teacher_epochs), work / "teacher", "foundation_distill")
    weights = export_backbone(work / "teacher", work / "teacher_backbone.pt")
    if args.tuned:
        run_tuned(args, work / args.tuned_name, weights, started)
        return
    finals: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        finals.setdefault("target_alone", {})[seed] = train_once(
            alone_config(seed, args.epochs_scale), work / f"seed{seed}" / "target_alone", "foundation_distill"
        )["final"]
        for loss in LOSSES:
            out = work / f"seed{seed}" / loss
            finals.setdefault(loss, {})[seed] = train_once(
                student_config(loss, weights, seed, args.epochs_scale), out, "foundation_distill"
            )["final"]
    features = teacher_recall(weights)
    timings = step_seconds(weights)

    ks = ["recall@1", "recall@2", "recall@4", "recall@8"]
    header = "| model | labels used | " + " | ".join(k.replace("recall@", "R@") for k in ks) + " | step (s) | step ratio |"
    lines = [
        f"# Distilling a foundation-style teacher on unlabelled images: kNN Recall@K (%) on held-out glyph classes, seeds {args.seeds}",
        "",
        f"{(time.perf_counter() - started) / 60:.0f} min this time (finished runs reused).",
        "",
        "Teacher: ResNet-18-D trained self-supervised on all 140 glyph classes rendered with another data seed "
        f"(no labels), {args.teacher_epochs} epochs; read as a timm model with a local weights file (`transfer.source`, "
        f"features avg_max, 512-d). Targets: ResNet-10t, 32-d, {max(1, round(10 * args.epochs_scale))} epochs (the demo's "
        "target has 10), the transfers on the training split's images without labels. Final epoch, no selection.",
        "",
        header,
        "|---|---|" + "---:|" * (len(ks) + 2),
        "| teacher, its own 512-d features (one model) | none | " + " | ".join(f"{100 * features[k]:.1f}" for k in ks) + " | | |",
        "| teacher, its 128-d trained head (for reference) | none | "
        + " | ".join(f"{100 * teacher['final'][k]:.1f}" for k in ks)
        + " | | |",
        "| target alone, Proxy-Anchor | training classes | "
        + " | ".join(mean_std([f[k] for f in finals["target_alone"].values()]) for k in ks)
        + " | | |",
    ]
    base = timings["relaxed_contrastive"]
    for loss, label in LABELS.items():
        cells = " | ".join(mean_std([f[k] for f in finals[loss].values()]) for k in ks)
        lines.append(f"| target ← teacher: {label} | none | {cells} | {timings[loss]:.3f} | {timings[loss] / base:.2f} |")
    lines += [
        "",
        "Step: median seconds of one training step of the target (teacher forward, loss, backward, update) on one "
        "90-image batch × 2 views, median of 10 rounds in which the losses take turns (one process); ratio to relaxed contrastive.",
    ]
    record = {"args": vars(args), "teacher_features": features, "teacher_head": teacher["final"], "final": finals, "step_seconds": timings}
    rerun = f"foundation_distill --seeds {' '.join(map(str, args.seeds))} --epochs-scale {args.epochs_scale}"
    rerun += f" --teacher-epochs {args.teacher_epochs}"
    write_results("foundation_distill", lines, record, rerun=rerun)


if __name__ == "__main__":
    main()
