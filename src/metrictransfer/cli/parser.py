"""The command line's arguments: :data:`COMMANDS` describes each command for ``--help``, and an ``_add_*``
function per command declares its options."""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

from metrictransfer.cli.commands import (
    cmd_data_inspect,
    cmd_demo,
    cmd_distill,
    cmd_embed,
    cmd_evaluate,
    cmd_export,
    cmd_index,
    cmd_report,
    cmd_search,
    cmd_serve,
    cmd_table,
    cmd_train,
    cmd_tune,
)
from metrictransfer.cli.commands_help import COMMANDS, _describe, _overview

# Only light modules here: torch and the rest load inside the commands, where Ctrl-C is handled.


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find the usage), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


DEBUG_HELP = "show the full traceback of an error (also: METRICTRANSFER_DEBUG=1)"
JSON_HELP = "print exactly one JSON object on stdout (progress and notices go to stderr)"
DEVICES = ["auto", "cpu", "cuda"]
MODEL_HELP = "which model of the run (a cohort's member1, say; default: the run's output model)"
CHECKPOINT_HELP = "a run folder, or a checkpoint file of one"


def _debug_option() -> argparse.ArgumentParser:
    """``--debug`` for a subcommand: SUPPRESS keeps a subcommand's default from hiding the top-level flag."""
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return common


def _command(subparsers: argparse._SubParsersAction[Any], name: str, key: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        parents=[_debug_option()],
        description=_describe(COMMANDS[key or name]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration key, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def _json(parser: argparse.ArgumentParser, help: str = JSON_HELP) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def _add_demo(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", help="output folder (default runs/demo-<timestamp>)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the three runs (default 0); the glyph images stay the same")
    demo.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (e.g. 0.2 for a quick look)")
    _overrides(demo)
    demo.add_argument("--overwrite", action="store_true", help="replace the demo runs already in --out")
    _json(demo, "print exactly one JSON object at the end (the Recall@K of each model); epoch lines go to stderr")
    demo.set_defaults(func=cmd_demo)


def _add_train(train: argparse.ArgumentParser) -> None:
    # names read from the registering decorators' source, so the help lists them without importing torch
    from metrictransfer.registry import METHODS

    train.add_argument("recipe", nargs="?", help=f"YAML recipe (method: {', '.join(METHODS.declared_names())})")
    train.add_argument("--out", help="run folder (default runs/<name>-<timestamp>)")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint (a finished run: where its results are)"
    )
    train.add_argument(
        "--overwrite", action="store_true", help="--out already holds a run: delete its checkpoints, results and log and start anew"
    )
    train.add_argument(
        "--root", metavar="PATH", help="the folder holding the dataset's files (csv: the CSV file); short for --set data.root=PATH"
    )
    _overrides(train)
    train.add_argument(
        "--on-nan",
        choices=["error", "skip"],
        help="a non-finite loss stops the run (error, the default) or its step is skipped and counted",
    )
    _json(train, "print exactly one JSON object at the end (run, final metrics, results and report paths); epoch lines go to stderr")
    train.set_defaults(func=cmd_train)


def _add_distill(distill: argparse.ArgumentParser) -> None:
    from metrictransfer import distillation as defaults

    distill.add_argument("--source", required=True, metavar="TIMM_NAME", help="the teacher: a timm model name with its weights tag")
    distill.add_argument("--target", required=True, metavar="BACKBONE", help="the student's timm backbone (resnet18, ...)")
    distill.add_argument("--dim", required=True, type=_positive_int, help="the student's embedding dimension")
    distill.add_argument(
        "--images",
        required=True,
        metavar="FOLDER_OR_CSV",
        help="your images: a folder (searched recursively, no labels read) or a CSV list",
    )
    distill.add_argument(
        "--eval-data", metavar="FOLDER_OR_CSV", help="labelled images to report Recall@K on (a folder per class, or a CSV): its test split"
    )
    distill.add_argument("--source-weights", metavar="FILE", help="a local state dict of the source: nothing is downloaded")
    distill.add_argument(
        "--source-features", choices=["pooled", "cls", "avg_max"], default="pooled", help="which features of the source (default: pooled)"
    )
    distill.add_argument("--source-image-size", type=_positive_int, help="the source's input side (default: its pretrained size)")
    distill.add_argument(
        "--target-pretrained", action="store_true", help="start the student from timm's pretrained weights (downloads them)"
    )
    distill.add_argument("--target-weights", metavar="FILE", help="start the student from a local state dict of its backbone")
    distill.add_argument("--epochs", type=_positive_int, default=defaults.DEFAULT_EPOCHS, help=f"default {defaults.DEFAULT_EPOCHS}")
    distill.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.DEFAULT_BATCH,
        help=f"images per batch, two views each (default {defaults.DEFAULT_BATCH})",
    )
    distill.add_argument(
        "--image-size",
        type=_positive_int,
        default=defaults.DEFAULT_IMAGE_SIZE,
        help=f"the student's input side (default {defaults.DEFAULT_IMAGE_SIZE})",
    )
    distill.add_argument("--lr", type=float, default=defaults.DEFAULT_LR, help=f"learning rate (default {defaults.DEFAULT_LR:g})")
    distill.add_argument(
        "--loss",
        default=defaults.DEFAULT_LOSS,
        metavar="NAME",
        help=f"the transfer loss, a registered one that needs no labels (default {defaults.DEFAULT_LOSS}: {defaults.LOSS_EVIDENCE})",
    )
    distill.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    distill.add_argument("--out", help="run folder (default runs/distill-<timestamp>)")
    distill.add_argument("--overwrite", action="store_true", help="--out already holds a run: start anew over it")
    distill.add_argument(
        "--print-recipe", action="store_true", help="print the recipe's YAML and stop (edit it, then: metrictransfer train RECIPE)"
    )
    _overrides(distill)
    _json(distill, "print exactly one JSON object at the end (run, final metrics, results and report paths); epoch lines go to stderr")
    distill.set_defaults(func=cmd_distill)


def _add_data(data: argparse.ArgumentParser) -> None:
    data_sub = data.add_subparsers(
        dest="data_command", required=True, metavar="inspect", help="the one data command: metrictransfer data inspect --help"
    )
    _add_data_inspect(_command(data_sub, "inspect", "data inspect"))


def _add_data_inspect(inspect: argparse.ArgumentParser) -> None:
    from metrictransfer.registry import DATASETS

    inspect.add_argument(
        "--dataset", required=True, metavar="NAME", help=f"a registered dataset: {', '.join(DATASETS.declared_names())} (or a plug-in's)"
    )
    inspect.add_argument("--root", help="the folder holding the dataset's files (csv: the CSV file)")
    inspect.add_argument(
        "--test-fraction",
        type=float,
        default=0.5,
        help="folder/csv without a split column: the share of classes held out for test (default 0.5)",
    )
    inspect.add_argument(
        "--no-decode",
        action="store_true",
        help="only list the files and check they exist and are not empty (seconds for 100k images); by default every "
        "image is also decoded as training decodes it, on every core, to find truncated or corrupt files",
    )
    _json(inspect)
    inspect.set_defaults(func=cmd_data_inspect)


def _add_embed(embed: argparse.ArgumentParser) -> None:
    from metrictransfer.normalization import NORMALIZATIONS

    model = embed.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help=f"{CHECKPOINT_HELP}: embed with the run's model, on the run's data")
    model.add_argument(
        "--timm",
        metavar="NAME",
        help="embed with a timm model's own features (as transfer.source; e.g. vit_small_patch14_dinov2.lvd142m), "
        "on the data of --recipe or --dataset",
    )
    embed.add_argument("--split", help="dataset split: train or test (default test)")
    embed.add_argument(
        "--images",
        metavar="PATH",
        help="embed these images instead of a split: a folder (searched recursively; its sub-folders as classes when every "
        "image is in one), a CSV of path[,label] (paths relative to its folder) or one image file",
    )
    embed.add_argument("--model", help=f"with --checkpoint: {MODEL_HELP}")
    embed.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="FILE.npz (embeddings, labels, item names; loaded whole), or any other name: a folder, an embeddings "
        "table of .npy arrays read memory-mapped, for large sets",
    )
    embed.add_argument(
        "--overwrite", action="store_true", help="replace the embeddings table already at --out (an .npz is always replaced)"
    )
    embed.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="a table's embeddings: float32 (default) or float16 (half the size; rows read back as float32)",
    )
    embed.add_argument("--batch-size", type=_positive_int, help="images per batch (default: eval.batch_size of the run or recipe)")
    embed.add_argument("--device", choices=DEVICES, help="where to embed (default: the run's or recipe's device)")
    timm = embed.add_argument_group("with --timm: the model (as transfer.source) and the data")
    weights = timm.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE", help="a local state dict of the model (offline: nothing is downloaded)")
    weights.add_argument(
        "--no-pretrained", action="store_true", help="random weights (tests); default: timm's pretrained weights, from its cache or the hub"
    )
    timm.add_argument(
        "--features",
        choices=["pooled", "cls", "avg_max"],
        help="the model's own pooled features (default), its class token, or average + maximum over its feature map",
    )
    timm.add_argument("--image-size", type=_positive_int, metavar="N", help="the model's input side (default: its pretrained input size)")
    timm.add_argument(
        "--normalization",
        metavar="NAME",
        help=f"the model's input convention: {', '.join(NORMALIZATIONS)} or model (default: from its pretrained configuration)",
    )
    data = timm.add_mutually_exclusive_group()
    data.add_argument("--recipe", metavar="RECIPE.yaml", help="a recipe whose data section says what to embed (and eval.metric)")
    data.add_argument("--dataset", metavar="NAME", help="a registered dataset, with the data section's defaults")
    timm.add_argument("--root", metavar="PATH", help="the folder holding the dataset's files; short for --set data.root=PATH")
    timm.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. --set data.num_classes=6 (repeatable)"
    )
    _json(embed)
    embed.set_defaults(func=cmd_embed)


def _add_evaluate(evaluate: argparse.ArgumentParser) -> None:
    what = evaluate.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help=f"{CHECKPOINT_HELP}: embed its test split, then evaluate")
    what.add_argument(
        "--embeddings",
        nargs="+",
        metavar="FILE.npz",
        help=".npz with embeddings and labels (see metrictransfer embed); several files: their ensemble",
    )
    evaluate.add_argument("--model", help="with --checkpoint: which model of the run (default: its output model)")
    evaluate.add_argument("--k", type=_k_list, help="comma-separated K values (default: the run's eval.recall_at, or 1,2,4,8)")
    evaluate.add_argument("--metric", choices=["euclidean", "cosine"], help="default: the run's or the file's, else euclidean")
    evaluate.add_argument("--query-gallery", action="store_true", help="queries (is_query) against the gallery (is_gallery)")
    evaluate.add_argument("--nmi", action="store_true", help="also NMI (k-means: slow on large sets)")
    evaluate.add_argument("--backend", choices=["torch", "faiss"], default="torch", help="kNN engine (default torch)")
    evaluate.add_argument("--device", choices=DEVICES, help="where to compute (default: auto)")
    _json(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def _add_index(index: argparse.ArgumentParser) -> None:
    index.add_argument("--checkpoint", help=CHECKPOINT_HELP + " (building a new index)")
    index.add_argument(
        "--images",
        metavar="FOLDER_CSV_OR_TABLE",
        help="a folder (searched recursively; sub-folders are classes), a CSV with path[,label] columns and any "
        "metadata columns (kept for search --where), or an embeddings table the run's model wrote (embed --images "
        "--out TABLE): built in chunks, and in shards under torchrun",
    )
    index.add_argument("--out", metavar="INDEX_DIR", help="the index folder to write (a new or empty one)")
    index.add_argument("--overwrite", action="store_true", help="replace the index INDEX_DIR holds (nothing else there is deleted)")
    index.add_argument(
        "--kind",
        choices=["auto", "flat", "ivf", "ivfpq", "hnsw"],
        default="auto",
        help="the faiss index (default auto: exact flat below 50,000 items, else IVF-Flat, or IVF-PQ when that exceeds --memory)",
    )
    index.add_argument("--memory", type=_byte_size, metavar="SIZE", help="memory budget for the vectors, e.g. 8GB (chooses the kind)")
    index.add_argument("--index", metavar="INDEX_DIR", help="change this built index in place (with --add and/or --remove)")
    index.add_argument(
        "--add", metavar="FOLDER_CSV_OR_TABLE", help="with --index: embed these images and add them (new ids), or add a table's rows"
    )
    index.add_argument(
        "--remove", metavar="IDS_OR_CSV", help="with --index: remove these items: ids like 3,17,20, or a CSV with an id or path column"
    )
    index.add_argument("--model", help=MODEL_HELP)
    index.add_argument("--batch-size", type=_positive_int, default=128, help="images per batch (default 128)")
    index.add_argument("--device", choices=DEVICES, default="auto", help="where to embed (default auto: a GPU if there is one)")
    _json(index)
    index.set_defaults(func=cmd_index)


def _byte_size(text: str) -> int:
    """``8GB``, ``512MB``, ``2.5G``, ``8GiB`` or a number of bytes (K, M, G, T: powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not match or float(match[1]) * 1024 ** " KMGT".index(match[2] or " ") < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 8GB, 512MB or a number of bytes, got {text!r}")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2] or " "))


def _add_search(search: argparse.ArgumentParser) -> None:
    search.add_argument("queries", nargs="+", metavar="QUERY_IMAGE", help="image files to find neighbours of")
    search.add_argument("--index", required=True, metavar="INDEX_DIR", help="built by metrictransfer index")
    search.add_argument("--k", type=_positive_int, default=10, help="neighbours per query (default 10)")
    search.add_argument(
        "--checkpoint",
        help="embed the queries with this run's PyTorch model, which must be the one that built the index (default: the "
        "index's own model.onnx, loaded in well under a second; without one, the checkpoint the index names)",
    )
    search.add_argument("--exclude-self", action="store_true", help="leave a query that is itself in the gallery out of its own results")
    search.add_argument("--nprobe", type=_positive_int, help="IVF indexes: clusters to visit (default: the one index measured)")
    search.add_argument("--ef", type=_positive_int, help="HNSW indexes: efSearch (default: the one index measured)")
    search.add_argument("--refine", type=_positive_int, metavar="N", help="re-rank the index's top N candidates by exact distance (N >= k)")
    search.add_argument("--where", metavar="CONDITION", help='only items whose metadata pass, e.g. "brand = acme and year >= 2020"')
    _json(search, "print exactly one JSON list (an entry per query: its label and neighbours) on stdout")
    search.add_argument("--grid", metavar="OUT.png", help="draw queries and neighbours (green: same class, red: other)")
    search.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to embed the queries (default auto: the CPU with the index's model.onnx, else a GPU if there is one)",
    )
    search.set_defaults(func=cmd_search)


def _add_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--index", required=True, metavar="INDEX_DIR", help="built by metrictransfer index")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; another needs --token)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--token",
        help="a secret every API request must send (Authorization: Bearer TOKEN), at least 16 characters; "
        "default: the METRICTRANSFER_TOKEN environment variable, which keeps it out of the process list",
    )
    serve.add_argument("--checkpoint", help="embed queries with this run's PyTorch model (the one that built the index)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest query image accepted, in MiB (default 20)")
    serve.add_argument("--device", choices=DEVICES, default="cpu", help="where to embed queries (default cpu)")
    serve.set_defaults(func=cmd_serve)


def _add_export(export: argparse.ArgumentParser) -> None:
    export.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    export.add_argument(
        "--format",
        required=True,
        choices=["safetensors", "torchscript", "onnx"],
        help="safetensors (the weights), torchscript or onnx (the whole model; onnx needs pip install onnx onnxruntime)",
    )
    export.add_argument("--out", required=True, metavar="FILE", help="the exported file (its description goes to FILE.json)")
    export.add_argument("--model", help=MODEL_HELP)
    _json(export)
    export.set_defaults(func=cmd_export)


def _add_report(report: argparse.ArgumentParser) -> None:
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders of finished runs (holding results.json)")
    _json(report)
    report.set_defaults(func=cmd_report)


def _add_table(table: argparse.ArgumentParser) -> None:
    table.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (holding results.json and config.yaml), or folders of them (a demo's, a study's)",
    )
    table.add_argument(
        "--metrics",
        type=lambda t: t.split(","),
        help="comma-separated keys (default: every recall@k, and agreement@k for runs evaluated without labels)",
    )
    _json(table, "print exactly one JSON list (the collected runs) instead of the table")
    table.set_defaults(func=cmd_table)


def _add_tune(tune: argparse.ArgumentParser) -> None:
    tune.add_argument("recipe", help="YAML recipe with data.validation (the classes trials are compared on)")
    tune.add_argument(
        "--space", required=True, metavar="SPACE.yaml", help="dotted configuration keys and their ranges (see docs/guides/tune.md)"
    )
    tune.add_argument(
        "--trials", required=True, type=_positive_int, help="finished trials wanted (complete or pruned; failed ones do not count)"
    )
    tune.add_argument("--out", required=True, metavar="DIR", help="the study's folder; the same command again continues the study there")
    tune.add_argument(
        "--jobs", type=_positive_int, default=1, help="worker processes training trials at once (default 1); each gets cores/jobs threads"
    )
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna database URL (postgresql://...) shared by workers on several machines (default sqlite:///DIR/study.db)",
    )
    tune.add_argument("--study-name", metavar="NAME", help="the study's name in the storage (default: DIR's name)")
    tune.add_argument("--metric", help="the value compared (higher is better): recall@1, map@r, ... (default: the run's primary metric)")
    tune.add_argument("--seed", type=int, default=0, help="seed of the sampler (TPE) (default 0)")
    tune.add_argument("--no-prune", action="store_true", help="train every trial to its end (default: median pruning)")
    tune.add_argument("--prune-startup", type=int, default=3, metavar="N", help="complete trials before any is pruned (default 3)")
    tune.add_argument("--prune-warmup", type=int, default=1, metavar="E", help="epochs of a trial never pruned (default 1)")
    tune.add_argument("--final", action="store_true", help="then retrain best.yaml without data.validation, once per --seeds, and test it")
    tune.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds of the --final runs (default 0 1 2)")
    tune.add_argument(
        "--overwrite", action="store_true", help="DIR holds another study: delete its files (and its study in --storage) and start anew"
    )
    _overrides(tune)
    _json(tune, "print exactly one JSON object at the end (counts, best trial, files, final metrics); trial lines go to stderr")
    tune.set_defaults(func=cmd_tune)


class _VersionAction(argparse.Action):
    """``--version``, reading the version only when asked (see ``metrictransfer.__getattr__``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        import metrictransfer

        print(f"metrictransfer {metrictransfer.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metrictransfer", description=_overview(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print metrictransfer's version and exit")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands above")
    adders = {
        "demo": _add_demo,
        "train": _add_train,
        "distill": _add_distill,
        "data": _add_data,
        "embed": _add_embed,
        "evaluate": _add_evaluate,
        "index": _add_index,
        "search": _add_search,
        "serve": _add_serve,
        "export": _add_export,
        "report": _add_report,
        "table": _add_table,
        "tune": _add_tune,
    }
    for name, add in adders.items():
        add(_command(sub, name))
    return parser
