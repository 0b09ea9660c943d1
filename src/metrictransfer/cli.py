"""The ``metrictransfer`` command line: demo, train, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from metrictransfer.config import ConfigError


def _k_list(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,2,4,8, got {text!r}")
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"K values must be >= 1, got {text!r}")
    return ks


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def cmd_demo(args: argparse.Namespace) -> int:
    from metrictransfer.demo import run_demo

    out = Path(args.out or f"runs/demo-{_timestamp()}")
    run_demo(out, seed=args.seed, epochs_scale=args.epochs_scale, overrides=args.set)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metrictransfer.config import load_config
    from metrictransfer.engine.trainer import train

    if args.resume:
        run_dir = Path(args.resume)
        config = load_config(run_dir / "config.yaml", args.set)
    else:
        if not args.recipe:
            raise ConfigError("give a recipe (metrictransfer train RECIPE.yaml) or --resume RUN_DIR")
        config = load_config(args.recipe, args.set)
        run_dir = Path(args.out or f"runs/{config.name or Path(args.recipe).stem}-{_timestamp()}")
    results = train(config, run_dir, resume=bool(args.resume))
    print(json.dumps({"run": str(run_dir), "final": results["final"]}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metrictransfer.engine.checkpoint import load_embedding_model
    from metrictransfer.engine.trainer import evaluate_model, resolve_device, test_dataset

    model, config = load_embedding_model(args.checkpoint)
    if args.k:
        config.eval.recall_at = args.k
    device = resolve_device(config.device)
    metrics = evaluate_model(model.to(device), test_dataset(config), config, device, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.checkpoint}: {config.data.dataset} test split, {config.eval.metric} distance")
        for key, value in metrics.items():
            print(f"  {key:<10} {value:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metrictransfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    overrides = {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "override a configuration key, e.g. --set optim.lr=3e-4 (repeatable)"}

    demo = sub.add_parser("demo", help="offline demo: source, target alone, target with transfer on glyphs")
    demo.add_argument("--out", help="output folder (default runs/demo-<timestamp>)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (e.g. 0.2 for a quick look)")
    demo.add_argument("--set", **overrides)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="run a recipe (method: source or transfer)")
    train.add_argument("recipe", nargs="?", help="YAML recipe")
    train.add_argument("--out", help="run folder (default runs/<name>-<timestamp>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--set", **overrides)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="Recall@K of a trained model on its dataset's test split")
    evaluate.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    evaluate.add_argument("--k", type=_k_list, help="comma-separated K values (default: the run's eval.recall_at)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"metrictransfer: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
