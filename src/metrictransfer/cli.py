"""The ``metrictransfer`` command line: demo, train, data inspect, embed, evaluate."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Only light modules here: torch and the rest load inside the commands, where Ctrl-C is handled.
from metrictransfer.errors import ConfigError, MetricTransferError, MissingFileError, is_output_problem, output_error

if TYPE_CHECKING:
    import numpy as np
    import torch

    from metrictransfer.evaluation.embeddings_file import EmbeddingsFile


def _k_list(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,2,4,8, got {text!r}") from None
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"K values must be >= 1, got {text!r}")
    return ks


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def cmd_demo(args: argparse.Namespace) -> int:
    from metrictransfer.demo import run_demo

    out = Path(args.out or f"runs/demo-{_timestamp()}")
    run_demo(out, seed=args.seed, epochs_scale=args.epochs_scale, overrides=args.set, overwrite=args.overwrite)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metrictransfer.config import load_config
    from metrictransfer.engine.trainer import train

    overrides = list(args.set) + ([f"optim.on_nan={args.on_nan}"] if args.on_nan else [])
    if args.resume:
        if args.recipe:
            raise ConfigError(
                f"give either a recipe (a new run) or --resume {args.resume} (continue that run with its own "
                "configuration), not both; change how a resumed run runs with --set KEY=VALUE"
            )
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume} continues that run in its own folder; --out {args.out} names another")
        if args.overwrite:
            raise ConfigError("--overwrite starts a new run over an old one; it cannot be combined with --resume")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            what = "does not exist" if not run_dir.exists() else "holds no run (no config.yaml)"
            raise MissingFileError(f"cannot resume {run_dir}: it {what}; give the folder of an interrupted run")
        config = load_config(run_dir / "config.yaml", overrides)
    else:
        if not args.recipe:
            raise ConfigError("give a recipe (metrictransfer train RECIPE.yaml) or --resume RUN_DIR")
        config = load_config(args.recipe, overrides)
        if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun give the run folder with --out: every process must write to the same one")
        run_dir = Path(args.out or f"runs/{config.name or Path(args.recipe).stem}-{_timestamp()}")
    results = train(config, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        from metrictransfer.report import write_report

        try:
            write_report(run_dir)
        except KeyboardInterrupt:
            print(f"metrictransfer: interrupted while writing the report; the run itself is finished and saved. "
                  f"Rebuild the report with: metrictransfer report {run_dir}", file=sys.stderr)
            return 130
        print(json.dumps({"run": str(run_dir), "final": results["final"], "report": str(run_dir / "report.md")}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from metrictransfer.report import write_report

    for run in args.runs:
        print(write_report(run))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from metrictransfer.evaluation.embeddings_file import save_embeddings
    from metrictransfer.evaluation.evaluate import embed_split
    from metrictransfer.runtime.checkpoint import load_embedding_model

    model, config = load_embedding_model(args.checkpoint, name=args.model)
    data = embed_split(model, config, args.split, args.device, args.batch_size, progress=sys.stderr.isatty())
    save_embeddings(args.out, data)
    print(json.dumps({"out": str(args.out), "items": len(data.labels), "dim": int(data.embeddings.shape[1])}))
    return 0


def _ensemble(files: list[EmbeddingsFile], paths: list[str]) -> torch.Tensor:
    """Several models' embeddings of the same items, L2-normalised and concatenated."""
    import torch

    from metrictransfer.evaluation import ensemble_embeddings
    from metrictransfer.evaluation.embeddings_file import check_same_items

    check_same_items(files, paths)
    return ensemble_embeddings([torch.from_numpy(f.embeddings) for f in files])


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from metrictransfer.evaluation import retrieval_metrics

    masks: dict[str, np.ndarray | None] = {}
    if args.embeddings:
        from metrictransfer.evaluation.embeddings_file import load_embeddings

        files = [load_embeddings(path, query_gallery=args.query_gallery) for path in args.embeddings]
        data = files[0]
        source = " + ".join(args.embeddings)
        metric = args.metric or data.metric or "euclidean"
        ks = args.k or [1, 2, 4, 8]
        if args.query_gallery:
            masks = {"is_query": data.is_query, "is_gallery": data.is_gallery}
        embeddings, labels = torch.from_numpy(data.embeddings), torch.from_numpy(data.labels)
        if len(files) > 1:
            embeddings = _ensemble(files, args.embeddings)
        device = args.device or "auto"
    else:
        from metrictransfer.evaluation.evaluate import embed_split
        from metrictransfer.runtime.checkpoint import load_embedding_model

        if args.query_gallery:
            raise ConfigError("--query-gallery applies to --embeddings files that hold is_query and is_gallery")
        model, config = load_embedding_model(args.checkpoint, name=args.model)
        data = embed_split(model, config, "test", args.device, progress=sys.stderr.isatty())
        source = f"{args.checkpoint}: {config.data.dataset} test split"
        metric = args.metric or config.eval.metric
        ks = args.k or config.eval.recall_at
        embeddings, labels = torch.from_numpy(data.embeddings), torch.from_numpy(data.labels)
        device = args.device or config.device
    from metrictransfer.runtime.device import resolve_device

    embeddings = embeddings.to(resolve_device(device))
    metrics = retrieval_metrics(
        embeddings, labels, ks, metric, nmi=args.nmi, backend=args.backend, progress=sys.stderr.isatty(),
        is_query=masks.get("is_query"), is_gallery=masks.get("is_gallery"),
    )
    if args.json:
        print(json.dumps(metrics))
        return 0
    mode = "query vs gallery" if masks else "all vs all"
    print(f"{source}: {len(labels)} items, {mode}, {metric} distance")
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.4f}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from metrictransfer.data.inspect import format_report, inspect_dataset

    report = inspect_dataset(args.dataset, args.root, args.test_fraction)
    print(json.dumps(report) if args.json else format_report(report))
    return 1 if any(s["missing_files"] for s in report["splits"].values()) else 0


def cmd_table(args: argparse.Namespace) -> int:
    from metrictransfer.engine.tables import check_metrics, collect_runs, markdown_table

    records = collect_runs(args.runs)
    check_metrics(records, args.metrics)
    print(json.dumps(records) if args.json else markdown_table(records, args.metrics))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from metrictransfer.search import build_index

    meta = build_index(args.checkpoint, args.images, args.out, args.model, _device(args.device), args.batch_size,
                       progress=sys.stderr.isatty())
    engine = "faiss" if meta["faiss"] else "exact (torch; pip install faiss-cpu for a faiss index)"
    labels = f"{len(meta['classes'])} classes" if meta["classes"] else "no labels"
    print(f"{args.out}: {meta['count']} images, {meta['dim']}-d, {meta['metric']}, {labels}, search: {engine}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from metrictransfer.export import description_path, export_model

    described = export_model(args.checkpoint, args.format, args.out, args.model)
    checked = described["checked"]
    print(f"{args.out}: {args.format}, {described['output']['embedding_dim']}-d embeddings, checked against the "
          f"PyTorch model (largest difference {checked['max_abs_difference']:.1e}); preprocessing in {description_path(args.out)}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from metrictransfer.search import Gallery

    if args.grid:
        from metrictransfer.engine.logging import figure_format

        figure_format(args.grid)  # a format matplotlib cannot write fails before the search, not after
    gallery = Gallery(args.index, args.checkpoint, _device(args.device))
    results = gallery.search(args.queries, args.k)
    query_labels = [_folder_label(q, gallery.meta["classes"]) for q in args.queries]
    if args.json:
        print(json.dumps([
            {"query": q, "label": label, "neighbours": [vars(n) for n in found]}
            for q, label, found in zip(args.queries, query_labels, results)
        ]))
    else:
        for q, found in zip(args.queries, results):
            print(q)
            for rank, n in enumerate(found, 1):
                print(f"  {rank:3d}  {n.distance:.4f}  {n.path}" + (f"  [{n.label}]" if n.label else ""))
    if args.grid:
        from metrictransfer.search.grid import draw_grid

        draw_grid(args.queries, results, args.grid, query_labels)
        if not args.json:
            print(f"grid: {args.grid}")
    return 0


def _folder_label(path: str, classes: list[str]) -> str | None:
    """A query's class when its folder is named like one of the gallery's classes."""
    name = Path(path).parent.name
    return name if name in classes else None


def _device(name: str) -> str:
    from metrictransfer.runtime.device import resolve_device

    return str(resolve_device(name))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find the usage), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


DEBUG_HELP = "show the full traceback of an error (also: METRICTRANSFER_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    # names read from the registering decorators' source, so the help lists them without importing torch
    from metrictransfer.registry import DATASETS, METHODS

    parser = _Parser(prog="metrictransfer", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # every subcommand takes --debug too; SUPPRESS keeps a subcommand's default from hiding the top-level flag
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, subparsers: argparse._SubParsersAction[Any] = sub,
                **options: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, parents=[common], **options)
        return parser
    overrides: dict[str, Any] = {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "override a configuration key, e.g. --set optim.lr=3e-4 (repeatable)"}

    demo = command("demo", help="offline demo: source, target alone, target with transfer on glyphs")
    demo.add_argument("--out", help="output folder (default runs/demo-<timestamp>)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (e.g. 0.2 for a quick look)")
    demo.add_argument("--set", **overrides)
    demo.add_argument("--overwrite", action="store_true", help="replace the demo runs already in --out")
    demo.set_defaults(func=cmd_demo)

    train = command("train", help=f"run a recipe (method: {', '.join(METHODS.declared_names())})")
    train.add_argument("recipe", nargs="?", help="YAML recipe")
    train.add_argument("--out", help="run folder (default runs/<name>-<timestamp>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="--out already holds a run: delete its checkpoints, results and log and start anew")
    train.add_argument("--set", **overrides)
    train.add_argument("--on-nan", choices=["error", "skip"],
                       help="a non-finite loss stops the run (error, the default) or its step is skipped and counted")
    train.set_defaults(func=cmd_train)

    data = command("data", help="look at a dataset folder")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = command("inspect", data_sub, help="images and classes per split; checks every listed file exists")
    inspect.add_argument("--dataset", required=True, metavar="NAME",
                         help=f"a registered dataset: {', '.join(DATASETS.declared_names())} (or a plug-in's)")
    inspect.add_argument("--root", help="the folder holding the dataset's files (csv: the CSV file)")
    inspect.add_argument("--test-fraction", type=float, default=0.5, help="folder/csv without a split column")
    inspect.add_argument("--json", action="store_true", help="print exactly one JSON object")
    inspect.set_defaults(func=cmd_data_inspect)

    embed = command("embed", help="embed one split of a run's dataset into an .npz file")
    embed.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    embed.add_argument("--split", default="test", help="dataset split (default test)")
    embed.add_argument("--model", help="which model of the run (a cohort's member1, say; default: the run's output model)")
    embed.add_argument("--out", required=True, help="output .npz (embeddings, labels, paths)")
    embed.add_argument("--batch-size", type=_positive_int, help="default: the run's eval.batch_size")
    embed.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the run's device")
    embed.set_defaults(func=cmd_embed)

    evaluate = command(
        "evaluate", help="Recall@K, MAP@R, R-Precision (and NMI) of a run's test split or of an embeddings file"
    )
    what = evaluate.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="run folder or checkpoint file: embed its test split, then evaluate")
    what.add_argument("--embeddings", nargs="+", metavar="FILE.npz",
                      help=".npz with embeddings and labels (see metrictransfer embed); several files: their ensemble")
    evaluate.add_argument("--model", help="with --checkpoint: which model of the run (default: its output model)")
    evaluate.add_argument("--k", type=_k_list, help="comma-separated K values (default: the run's eval.recall_at, or 1,2,4,8)")
    evaluate.add_argument("--metric", choices=["euclidean", "cosine"], help="default: the run's or the file's, else euclidean")
    evaluate.add_argument("--query-gallery", action="store_true", help="queries (is_query) against the gallery (is_gallery)")
    evaluate.add_argument("--nmi", action="store_true", help="also NMI (k-means: slow on large sets)")
    evaluate.add_argument("--backend", choices=["torch", "faiss"], default="torch", help="kNN engine (default torch)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to compute (default: auto)")
    evaluate.add_argument("--json", action="store_true", help="print exactly one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)
    index = command("index", help="embed a gallery of images with a run's model, for metrictransfer search")
    index.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    index.add_argument("--images", required=True, metavar="FOLDER_OR_CSV",
                       help="a folder (searched recursively; sub-folders are classes) or a CSV with path[,label] columns")
    index.add_argument("--out", required=True, metavar="INDEX_DIR", help="the index folder to write")
    index.add_argument("--model", help="which model of the run (a cohort's member1, say; default: its output model)")
    index.add_argument("--batch-size", type=_positive_int, default=128)
    index.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    index.set_defaults(func=cmd_index)

    search = command("search", help="nearest gallery images of query images")
    search.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    search.add_argument("--index", required=True, metavar="INDEX_DIR", help="built by metrictransfer index")
    search.add_argument("--k", type=_positive_int, default=10, help="neighbours per query (default 10)")
    search.add_argument("--checkpoint", help="the model's checkpoint, if it moved since the index was built")
    search.add_argument("--json", action="store_true", help="print exactly one JSON list")
    search.add_argument("--grid", metavar="OUT.png", help="draw queries and neighbours (green: same class, red: other)")
    search.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    search.set_defaults(func=cmd_search)

    export = command("export", help="the embedding model as safetensors, TorchScript or ONNX, checked after writing")
    export.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    export.add_argument("--format", required=True, choices=["safetensors", "torchscript", "onnx"])
    export.add_argument("--out", required=True, metavar="FILE", help="the exported file (its description goes to FILE.json)")
    export.add_argument("--model", help="which model of the run (a cohort's member1, say; default: its output model)")
    export.set_defaults(func=cmd_export)

    report = command("report", help="(re)build a finished run's report.md and plots")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.set_defaults(func=cmd_report)

    table = command("table", help="final metrics of finished runs as one markdown table (seeds of one configuration averaged)")
    table.add_argument("runs", nargs="+", metavar="RUN_DIR",
                       help="run folders (holding results.json and config.yaml), or folders of them (a demo's, a study's)")
    table.add_argument("--metrics", type=lambda t: t.split(","), help="comma-separated keys (default: every recall@k)")
    table.add_argument("--json", action="store_true", help="print the collected runs as JSON instead")
    table.set_defaults(func=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (:class:`~metrictransfer.errors.MetricTransferError`, and a full,
    read-only or forbidden output place) print one line and exit 2; Ctrl-C exits 130 without a
    traceback; anything else is a bug and keeps its traceback."""
    debug = os.environ.get("METRICTRANSFER_DEBUG", "") not in ("", "0")
    from metrictransfer.engine.interrupt import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
        debug = debug or getattr(args, "debug", False)
        status: int = args.func(args)
        return status
    except TrainingInterrupted as stop:
        print(f"metrictransfer: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        _report(debug, "interrupted (Ctrl-C)")
        return 130
    except MetricTransferError as err:
        _report(debug, f"error: {err}")
        return err.exit_status
    except OSError as err:
        if not is_output_problem(err):
            raise
        _report(debug, f"error: {output_error(err, verb='use')}")  # raised outside our writers: read or write
        return 2


def _report(debug: bool, message: str) -> None:
    if debug:
        traceback.print_exc()
    print(f"metrictransfer: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
