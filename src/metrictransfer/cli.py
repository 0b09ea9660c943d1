"""The ``metrictransfer`` command line: a ``cmd_*`` function per command, and a ``_add_*`` function that
declares its options. :data:`COMMANDS` describes each command for ``--help``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import textwrap
import time
import traceback
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, NoReturn

# Only light modules here: torch and the rest load inside the commands, where Ctrl-C is handled.
from metrictransfer.errors import ConfigError, MetricTransferError, MissingFileError, command_options, is_output_problem, output_error


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


def _json_only(args: argparse.Namespace) -> AbstractContextManager[Any]:
    """With ``--json``, what the work prints (epoch lines, notices) goes to stderr, so that stdout holds the
    one JSON document the command prints after it."""
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def cmd_demo(args: argparse.Namespace) -> int:
    from metrictransfer.demo import run_demo

    out = Path(args.out or f"runs/demo-{_timestamp()}")
    with _json_only(args):
        summary = run_demo(out, seed=args.seed, epochs_scale=args.epochs_scale, overrides=args.set, overwrite=args.overwrite)
    if args.json:
        print(json.dumps({"out": str(out), **summary}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metrictransfer.config import load_config

    overrides = ([f"data.root={json.dumps(args.root)}"] if args.root else []) + list(args.set)  # quoted: any path
    overrides += [f"optim.on_nan={args.on_nan}"] if args.on_nan else []
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
        from metrictransfer.engine.run_folder import finished_run

        done = finished_run(run_dir, config)
        if done is not None:  # answered without loading the model or the data
            return _already_finished(run_dir, done, config.optim.epochs, args.json)
    else:
        if not args.recipe:
            raise ConfigError("give a recipe (metrictransfer train RECIPE.yaml) or --resume RUN_DIR")
        config = load_config(args.recipe, overrides)
        if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun give the run folder with --out: every process must write to the same one")
        run_dir = Path(args.out or f"runs/{config.name or Path(args.recipe).stem}-{_timestamp()}")
    return _train_and_report(args, config, run_dir, resume=bool(args.resume))


def _train_and_report(
    args: argparse.Namespace, config: Any, run_dir: Path, resume: bool = False, callbacks: list[Any] | None = None
) -> int:
    """Train (or resume) the run, write its report, print where they are."""
    from metrictransfer.engine.trainer import train
    from metrictransfer.report import write_report

    main_process = int(os.environ.get("RANK", "0")) == 0
    with _json_only(args):  # the report is written under the run's lock: no --overwrite can start before it ends
        results = train(config, run_dir, resume=resume, overwrite=args.overwrite, report=write_report, extra_callbacks=callbacks)
    if main_process:
        if args.json:
            print(
                json.dumps(
                    {
                        "run": str(run_dir),
                        "final": results["final"],
                        "results": str(run_dir / "results.json"),
                        "report": str(run_dir / "report.md"),
                        "already_finished": False,
                    }
                )
            )
        else:
            from metrictransfer.formatting import metrics_text

            final = metrics_text(results["final"], ", ")
            print(f"{run_dir}: trained {results['epochs']} epochs; final {final}; report: {run_dir / 'report.md'}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from metrictransfer.config import config_to_dict
    from metrictransfer.distill import OPTIONS, distill_config

    config = distill_config(
        args.source,
        args.target,
        args.dim,
        args.images,
        eval_data=args.eval_data,
        source_weights=args.source_weights,
        source_features=args.source_features,
        source_image_size=args.source_image_size,
        target_pretrained=args.target_pretrained,
        target_weights=args.target_weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=args.lr,
        seed=args.seed,
        overrides=list(args.set),
    )
    if args.print_recipe:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun give the run folder with --out: every process must write to the same one")
    run_dir = Path(args.out or f"runs/distill-{_timestamp()}")
    with command_options(OPTIONS):  # its errors name --source-weights, not the recipe key it sets
        return _train_and_report(args, config, run_dir, callbacks=None if args.json else [_resume_hint(run_dir)])


def _resume_hint(run_dir: Path) -> Any:
    """A callback that says where the recipe is and how to resume once training starts: by then the
    recipe (config.yaml) is written and the folder is kept; a start that fails before it removes the
    folder it created, so a hint printed earlier would name a folder that is gone."""
    from metrictransfer.engine.callbacks import Callback

    class ResumeHint(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            if trainer.ranks.main:  # the recipe is the run's config.yaml: resumed, rerun or edited like any other
                print(
                    f"metrictransfer: recipe {run_dir / 'config.yaml'} (resume: metrictransfer train --resume {run_dir})", file=sys.stderr
                )

    return ResumeHint()


def _already_finished(run_dir: Path, results: dict[str, Any], epochs: int, as_json: bool) -> int:
    """``train --resume`` of a run that has trained all its epochs: where its results are, at once."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from metrictransfer.engine.run_folder import claim_run_folder

    claim_run_folder(run_dir, resume=True).release()  # refuses a folder in use; removes a killed writer's temporaries
    report = run_dir / "report.md"
    if as_json:
        print(
            json.dumps(
                {
                    "run": str(run_dir),
                    "final": results.get("final"),
                    "results": str(run_dir / "results.json"),
                    "report": str(report),
                    "already_finished": True,
                }
            )
        )
    else:
        rebuild = "" if report.is_file() else f"; it has no report.md: metrictransfer report {run_dir}"
        print(f"{run_dir} already finished ({epochs} epochs); its results: {run_dir / 'results.json'}{rebuild}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from metrictransfer.formatting import percent
    from metrictransfer.tuning import Pruning, run_study

    if args.seeds is not None and not args.final:
        raise ConfigError("--seeds are the seeds of the --final runs; add --final (or drop --seeds)")
    pruning = Pruning(enabled=not args.no_prune, startup=args.prune_startup, warmup=args.prune_warmup)
    with _json_only(args):
        result = run_study(
            args.recipe,
            args.space,
            args.trials,
            args.out,
            jobs=args.jobs,
            storage=args.storage,
            study_name=args.study_name,
            metric=args.metric,
            seed=args.seed,
            overrides=list(args.set),
            final_seeds=(args.seeds or [0, 1, 2]) if args.final else None,
            overwrite=args.overwrite,
            pruning=pruning,
            progress="stderr" if args.json else "stdout",
        )
    if args.json:
        print(json.dumps(result))
        return 0
    trials, best = result["trials"], result["best"]
    done = f"{trials['counted']}/{trials['wanted']} trials done ({trials['complete']} complete, {trials['pruned']} pruned"
    done += f", {trials['failed']} failed)"
    if best is None:
        print(f"{args.out}: {done}; no trial complete, no best.yaml")
    else:
        value = f"{result['metric']} {percent(best['value'])} (validation)"
        print(f"{args.out}: {done}; best trial {best['trial']}: {value}; {args.out}/best.yaml")
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if "final" in result:
        final = result["final"]
        shown = ", ".join(f"{k} {100 * v:.1f} ± {100 * final['std'][k]:.1f}" for k, v in final["mean"].items())
        print(f"{args.out}/final.md: test split over seeds {final['seeds']}: {shown} (%)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from metrictransfer.report import write_report

    written = []
    for run in args.runs:
        with _json_only(args), _locked_run(Path(run)):
            written.append(str(write_report(run)))
        if not args.json:
            print(written[-1])
    if args.json:
        print(json.dumps({"reports": written}))
    return 0


@contextlib.contextmanager
def _locked_run(run: Path) -> Iterator[None]:
    """Hold a finished run's lock while its files are rewritten, then record them in its manifest."""
    if not (run / "results.json").is_file():  # write_report says what is missing
        yield
        return
    from metrictransfer.engine.run_folder import RunLock
    from metrictransfer.output_folder import Manifest

    with RunLock(run):
        yield
        manifest = Manifest.read(run)
        if manifest is not None:
            manifest.record_present()


def cmd_embed(args: argparse.Namespace) -> int:
    _check_embed_options(args)
    from functools import partial

    from metrictransfer.evaluation.embed_to_file import check_output, embed_images_to_file, embed_split_to_file
    from metrictransfer.evaluation.embedders import checkpoint_embedder, timm_embedder
    from metrictransfer.runtime import distributed
    from metrictransfer.runtime.device import resolve_device

    check_output(args.out, args.dtype, args.overwrite)  # before minutes of loading a model
    if args.images:
        listed, hint = _listed_images(args.images)  # a wrong path is said before a model loads, too
        embed: Callable[..., Any] = partial(embed_images_to_file, images=listed, bad_hint=hint)
    else:
        embed = partial(embed_split_to_file, split=args.split or "test")
    with _json_only(args):
        if args.checkpoint:
            model, config, preprocess, record = checkpoint_embedder(args.checkpoint, args.model)
        else:
            given = {"name": args.timm, "pretrained": not args.no_pretrained, "weights": args.weights, "features": args.features}
            given |= {"image_size": args.image_size, "normalization": args.normalization}
            model, config, preprocess, record = timm_embedder(given, args.recipe, args.dataset, args.root, args.set)
        ranks, device_name = distributed.setup(args.device or config.device)  # under torchrun: this process's share
        try:
            written = embed(
                model=model,
                config=config,
                out=args.out,
                device=resolve_device(device_name),
                preprocess=preprocess,
                batch_size=args.batch_size,
                dtype=args.dtype,
                overwrite=args.overwrite,
                model_record=record,
                progress=ranks.main and sys.stderr.isatty(),
            )
        finally:
            distributed.teardown()
    if not ranks.main:
        return 0
    items, dim = written.count, written.dim
    what = {"images": args.images} if args.images else {"split": args.split or "test"}
    if args.json:
        form = "table" if written.table else "npz"
        print(json.dumps({"out": str(args.out), **what, "items": items, "dim": dim, "format": form, "dtype": written.dtype}))
    else:
        table = f" ({written.dtype} table)" if written.table else ""
        of = f"images of {args.images}" if args.images else f"items of the {what['split']} split"
        print(f"{args.out}: {items} {of}, {dim}-d embeddings{table}")
    return 0


def _listed_images(images: str) -> tuple[Any, str]:
    """The images of --images (a folder, a CSV or one image file), and what to do about an unreadable one."""
    from metrictransfer.search.gallery import list_images

    source = Path(images)
    if source.is_dir():
        hint = f"fix it or remove it from {images}"
    elif source.suffix.lower() == ".csv":
        hint = f"fix it or remove its row from {images}"
    else:
        hint = "fix it or embed another image"
    return list_images(source), hint


_TIMM_OPTIONS = ("weights", "no_pretrained", "features", "image_size", "normalization", "recipe", "dataset", "root", "set")


def _check_embed_options(args: argparse.Namespace) -> None:
    """What --checkpoint and --timm each take, before anything loads."""
    if args.images and (args.dataset or args.split or args.root):
        split = " and ".join(flag for flag, value in (("--dataset", args.dataset), ("--split", args.split), ("--root", args.root)) if value)
        raise ConfigError(f"give --images (any images) or {split} (a dataset's split), not both")
    if args.checkpoint:
        given = [f"--{name.replace('_', '-')}" for name in _TIMM_OPTIONS if getattr(args, name)]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to --timm; --checkpoint embeds with the run's own model, data and preprocessing")
        return
    if args.model:
        raise ConfigError("--model picks a model of a run (--checkpoint); --timm names the model itself")
    if not (args.recipe or args.dataset or args.images):
        raise ConfigError(
            "--timm embeds the data of a recipe or a dataset, or images: give --recipe RECIPE.yaml or --dataset NAME [--root PATH], "
            "or --images PATH"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metrictransfer.evaluation.measure import evaluate_checkpoint, evaluate_embeddings
    from metrictransfer.formatting import percent

    options = {"ks": args.k, "metric": args.metric, "nmi": args.nmi, "backend": args.backend, "device": args.device}
    progress = sys.stderr.isatty()
    if args.embeddings:
        measured = evaluate_embeddings(args.embeddings, args.query_gallery, progress=progress, **options)
    elif args.query_gallery:
        raise ConfigError("--query-gallery applies to --embeddings files that hold is_query and is_gallery")
    else:
        measured = evaluate_checkpoint(args.checkpoint, args.model, progress=progress, **options)
    if args.json:
        print(json.dumps(measured.metrics))
        return 0
    mode = "query vs gallery" if measured.query_gallery else "all vs all"
    print(f"{measured.source}: {measured.items} items, {mode}, {measured.metric} distance")
    width = max(len(k) for k in measured.metrics)
    for key, value in measured.metrics.items():
        print(f"  {key:<{width}}  {percent(value):>6}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from metrictransfer.data.inspect import advice, format_report, inspect_dataset

    report = inspect_dataset(args.dataset, args.root, args.test_fraction, decode=not args.no_decode)
    print(json.dumps(report) if args.json else format_report(report))
    todo = advice(report)
    if todo:
        print(f"metrictransfer: {todo}", file=sys.stderr)
    return 1 if todo else 0


def cmd_table(args: argparse.Namespace) -> int:
    from metrictransfer.engine.tables import check_metrics, collect_runs, markdown_table

    records = collect_runs(args.runs)
    check_metrics(records, args.metrics)
    print(json.dumps(records) if args.json else markdown_table(records, args.metrics))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from metrictransfer.search import build_index

    with _json_only(args):
        meta = build_index(
            args.checkpoint,
            args.images,
            args.out,
            args.model,
            _device(args.device),
            args.batch_size,
            progress=sys.stderr.isatty(),
            overwrite=args.overwrite,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "count": meta["count"],
                    "dim": meta["dim"],
                    "metric": meta["metric"],
                    "classes": len(meta["classes"]),
                    "faiss": bool(meta["faiss"]),
                    "query_model": bool(meta["query_model"]),
                }
            )
        )
        return 0
    engine = "faiss" if meta["faiss"] else "exact (numpy; pip install faiss-cpu for a faiss index)"
    if not meta["query_model"]:
        engine += ", queries embedded by PyTorch (pip install onnx onnxruntime and rebuild for faster searches)"
    labels = f"{len(meta['classes'])} classes" if meta["classes"] else "no labels"
    print(f"{args.out}: {meta['count']} images, {meta['dim']}-d, {meta['metric']}, {labels}, search: {engine}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from metrictransfer.export import description_path, export_model

    with _json_only(args):
        described = export_model(args.checkpoint, args.format, args.out, args.model)
    checked, dim = described["checked"], described["output"]["embedding_dim"]
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "format": args.format,
                    "description": str(description_path(args.out)),
                    "embedding_dim": dim,
                    "max_abs_difference": checked["max_abs_difference"],
                }
            )
        )
        return 0
    print(
        f"{args.out}: {args.format}, {dim}-d embeddings, checked against the "
        f"PyTorch model (largest difference {checked['max_abs_difference']:.1e}); preprocessing in {description_path(args.out)}"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from metrictransfer.search import Gallery

    if args.grid:
        from metrictransfer.engine.logging import figure_format

        figure_format(args.grid)  # a format matplotlib cannot write fails before the search, not after
    gallery = Gallery(args.index, args.checkpoint, args.device)  # resolved only if PyTorch embeds the queries
    results = gallery.search(args.queries, args.k, exclude_self=args.exclude_self)
    query_labels = [_folder_label(q, gallery.meta["classes"]) for q in args.queries]
    if args.json:
        print(
            json.dumps(
                [
                    {"query": q, "label": label, "neighbours": [vars(n) for n in found]}
                    for q, label, found in zip(args.queries, query_labels, results)
                ]
            )
        )
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
JSON_HELP = "print exactly one JSON object on stdout (progress and notices go to stderr)"
DEVICES = ["auto", "cpu", "cuda"]
MODEL_HELP = "which model of the run (a cohort's member1, say; default: the run's output model)"
CHECKPOINT_HELP = "a run folder, or a checkpoint file of one"


class Command(NamedTuple):
    """What ``--help`` says of a command: one line for the command list, then what it does, what it writes
    and prints, and the pages of docs/ that document it."""

    summary: str
    does: str
    writes: str
    docs: str


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "offline: a source, a target alone, a target with transfer",
        "The offline demo: a source model, a smaller target alone, and the same target trained with the relaxed "
        "contrastive loss from the source, on glyph images rendered from matplotlib's fonts (no network, no "
        "dataset to download); compares their Recall@K on held-out classes.",
        "--out (default runs/demo-<timestamp>): a run folder per model, each with its report.md, and the three's "
        "results.json, log.csv, recall.png and report.md (the three side by side); prints a line per epoch, "
        "the Recall@K table (%) and a conclusion (--json: one JSON object)",
        "getting-started.md",
    ),
    "train": Command(
        "train a model from a YAML recipe, or --resume a run",
        "Train a run from a YAML recipe, or continue an interrupted one from its newest checkpoint with "
        "--resume RUN_DIR (a finished run is answered at once). --set overrides any configuration key.",
        "the run folder (--out, default runs/<name>-<timestamp>): config.yaml, checkpoint.pt, log.csv, results.json, "
        "report.md and plots; prints a line per epoch and the final metrics (--json: one JSON object)",
        "getting-started.md, guides/transfer.md, guides/long-runs.md (resuming, torchrun), reference/configuration.md (every key)",
    ),
    "distill": Command(
        "distil any timm model into a small one on your images",
        "Distil any timm model (a foundation model such as DINOv2, CLIP or SigLIP: pretrained weights by default, "
        "--source-weights FILE offline) into a small target with a DIM-d head on a folder of images (or a CSV "
        "list), without labels, with the relaxed contrastive loss. Builds an ordinary transfer recipe; "
        "the result is an ordinary run (evaluate, export, index, search, report, train --resume).",
        "the run folder (--out, default runs/distill-<timestamp>): config.yaml (the recipe), checkpoint.pt, log.csv, "
        "results.json, report.md and plots; prints a line per epoch with Recall@K on --eval-data's test split, or "
        "else agreement@k with the source on a tenth of the images held out, and the final metrics (--json: one "
        "JSON object; --print-recipe: the recipe's YAML and nothing else)",
        "guides/distill.md, guides/transfer.md",
    ),
    "data": Command(
        "look at a dataset's files before training on it",
        "Look at a dataset's files before training on it: metrictransfer data inspect.",
        "nothing",
        "guides/datasets.md",
    ),
    "data inspect": Command(
        "images and classes per split; finds missing and unreadable files",
        "Count the images and classes of each split of a dataset, check that every image its annotation files "
        "list exists and is not empty, and decode each one as training does (on every core; --no-decode: "
        "only list them); exits 1 when files are missing, empty or unreadable, with one line saying what to do.",
        "nothing; prints a table of the splits (--json: one JSON object)",
        "guides/datasets.md",
    ),
    "embed": Command(
        "embed a split or any images with a run's model or a timm model",
        "Embed one split of a dataset, or any images (--images: a folder, sub-folders as classes, a CSV of "
        "path[,label], or one image file): with a run's model on the run's data (--checkpoint), or with any timm "
        "model's own features (--timm, pretrained weights by default, --weights FILE offline) on the data of a "
        "recipe or --dataset, preprocessed by that data's test transform at the model's input size and "
        "normalisation. Under torchrun each process embeds its share of the images; the output holds every row "
        "in the dataset's (or the listing's) order.",
        "--out FILE.npz: embeddings, labels and item names (of --images: each image's path, and its class where "
        "known, else label -1); any other --out: an embeddings table, a folder of embeddings.npy, labels.npy, "
        "items.npy and meta.json, read memory-mapped (what evaluate --embeddings and transfer.source_embeddings "
        "read); prints how many items and dimensions (--json: one JSON object)",
        "guides/evaluation.md, guides/transfer.md (sources at scale)",
    ),
    "evaluate": Command(
        "Recall@K, MAP@R, R-Precision (NMI) of a run or embeddings",
        "Retrieval metrics of a run's model on its dataset's test split (--checkpoint), or of .npz embeddings "
        "files (--embeddings; several files: their ensemble): every item against all others, or queries "
        "against a gallery.",
        "nothing; prints the metrics in percent (--json: one JSON object, in fractions)",
        "guides/evaluation.md",
    ),
    "index": Command(
        "embed a gallery of images with a run's model, for search",
        "Embed a gallery of images (a folder, sub-folders as classes, or a CSV of path[,label]) with a run's "
        "model, for metrictransfer search.",
        "--out INDEX_DIR: embeddings.npz, index.json, model.onnx (the model, for fast searches; with onnx and onnxruntime "
        "installed) and faiss.index (with faiss); prints what it holds "
        "(--json: one JSON object)",
        "guides/using-a-model.md",
    ),
    "search": Command(
        "the nearest gallery images of query images",
        "The nearest gallery images of each query image, in an index built by metrictransfer index, embedded with the model that "
        "built it (its ONNX copy in the index: no PyTorch is loaded).",
        "nothing, or with --grid an image of the queries and their neighbours; prints the neighbours and their "
        "distances (--json: one JSON list, an entry per query)",
        "guides/using-a-model.md",
    ),
    "export": Command(
        "the model as safetensors, TorchScript or ONNX, checked",
        "Export a run's embedding model for other programs, and check the written file against the PyTorch model.",
        "--out FILE and its description FILE.json (preprocessing, architecture, checksum); prints the largest "
        "difference found (--json: one JSON object)",
        "guides/using-a-model.md",
    ),
    "report": Command(
        "(re)build a finished run's report.md and plots",
        "(Re)build the report of finished runs: the final metrics of every model, training curves, a retrieval "
        "grid and a map of the test embeddings.",
        "RUN_DIR/report.md, curves.png, retrieval.png and embedding_map.png; prints each report's path (--json: one JSON object)",
        "guides/using-a-model.md",
    ),
    "table": Command(
        "final metrics of finished runs as one markdown table",
        "The final metrics of finished runs (or of folders of them, a demo's say) as one markdown table in percent: "
        "a row names its runs, dataset, model, the teacher it learned from and its method with the few settings "
        "that tell it apart; runs of one configuration that differ only in the seed are one row (mean ± std).",
        "nothing; prints the table (--json: one JSON list, a record per run)",
        "guides/using-a-model.md",
    ),
    "tune": Command(
        "hyperparameter search (Optuna) on validation classes",
        "Search a recipe's hyperparameters with Optuna (TPE, median pruning): each trial is an ordinary run of the "
        "recipe with values drawn from --space, compared on the recipe's data.validation classes, never on the "
        "test split. The study is stored (DIR/study.db, or --storage) so that rerunning the command resumes it "
        "until --trials are done; --jobs runs workers in parallel. --final retrains the best configuration on "
        "all training classes and evaluates the test split once per seed.",
        "--out DIR: study.json, study.db, trials/trial-NNNN/ (run folders), best.yaml, trials.csv, trials.md, "
        "history.png, importances.png; with --final, final/seed-S/, final.md and final.json; prints a line per "
        "finished trial and a summary, in percent (--json: one JSON object, in fractions)",
        "guides/tune.md",
    ),
}


def _overview() -> str:
    """The top-level help: every command in a line."""
    listed = {name: command for name, command in COMMANDS.items() if name != "data"}  # the group shows as data inspect
    width = max(map(len, listed))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in listed.items()]
    return "\n".join(
        [
            "Deep metric learning with knowledge transfer between embedding models.",
            "",
            "commands (metrictransfer COMMAND --help: what it writes, its options, docs):",
            *lines,
            "",
            "Commands that print results take --json: one JSON document on stdout.",
            "Documentation: docs/index.md in the repository.",
        ]
    )


def _describe(command: Command) -> str:
    width = max(40, shutil.get_terminal_size().columns - 2)  # argparse's own width
    wrap = textwrap.TextWrapper(width=width, subsequent_indent="  ")
    return "\n".join([textwrap.fill(command.does, width), "", wrap.fill(f"writes: {command.writes}"), wrap.fill(f"docs: {command.docs}")])


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
    from metrictransfer import distill as defaults

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
    index.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    index.add_argument(
        "--images",
        required=True,
        metavar="FOLDER_OR_CSV",
        help="a folder (searched recursively; sub-folders are classes) or a CSV with path[,label] columns",
    )
    index.add_argument("--out", required=True, metavar="INDEX_DIR", help="the index folder to write (a new or empty one)")
    index.add_argument("--overwrite", action="store_true", help="replace the index INDEX_DIR holds (nothing else there is deleted)")
    index.add_argument("--model", help=MODEL_HELP)
    index.add_argument("--batch-size", type=_positive_int, default=128, help="images per batch (default 128)")
    index.add_argument("--device", choices=DEVICES, default="auto", help="where to embed (default auto: a GPU if there is one)")
    _json(index)
    index.set_defaults(func=cmd_index)


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
    _json(search, "print exactly one JSON list (an entry per query: its label and neighbours) on stdout")
    search.add_argument("--grid", metavar="OUT.png", help="draw queries and neighbours (green: same class, red: other)")
    search.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to embed the queries (default auto: the CPU with the index's model.onnx, else a GPU if there is one)",
    )
    search.set_defaults(func=cmd_search)


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
        "export": _add_export,
        "report": _add_report,
        "table": _add_table,
        "tune": _add_tune,
    }
    for name, add in adders.items():
        add(_command(sub, name))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (:class:`~metrictransfer.errors.MetricTransferError`, and a full,
    read-only or forbidden output place) print one line and exit 2, or 1 for a fault of the machine (a
    full disk); Ctrl-C exits 130 without a traceback; anything else is a bug and keeps its traceback."""
    debug = os.environ.get("METRICTRANSFER_DEBUG", "") not in ("", "0")
    from metrictransfer.engine.interrupt import Interrupted, defer_termination

    args: argparse.Namespace | None = None
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.func in (cmd_train, cmd_distill):
            defer_termination()  # a training whose partner failed says so in one line before it ends
        debug = debug or getattr(args, "debug", False)
        status: int = args.func(args)
        return status
    except Interrupted as stop:
        print(f"metrictransfer: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        _report(debug, "interrupted (Ctrl-C)")
        return 130
    except MetricTransferError as err:
        _report(debug, f"error: {_own_words(err)}")
        return err.exit_status
    except OSError as err:
        if not is_output_problem(err):
            raise
        made = output_error(err, verb="use")  # raised outside our writers: read or write
        _report(debug, f"error: {made}")
        return made.exit_status  # 1 for a full disk or an I/O error, 2 for a place the user chose
    except RuntimeError as err:
        lost = _lost_process(err, args)
        if lost is None:
            raise
        _report(debug, f"error: {lost}")
        return 1


def _lost_process(err: RuntimeError, args: argparse.Namespace | None) -> str | None:
    """One line for a collective operation that failed under torchrun because another process of the run
    ended (killed, out of memory, its machine lost): what happened and how to go on. None for any other
    error, which keeps its traceback."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or not any(
        "torch/distributed/" in frame.filename.replace(os.sep, "/") for frame in traceback.extract_tb(err.__traceback__)
    ):
        return None
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = cause.split("] ", 1)[-1].split(". ")[0]  # gloo's "[file:line] Read error ...: Connection reset by peer"
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    go_on = f"continue it with the same torchrun command and `metrictransfer train --resume {run}`" if run else "run the command again"
    rank = os.environ.get("RANK", "?")
    return (
        f"process {rank} of {world}: another process of this run ended or stopped answering ({cause}); its last checkpoint is kept: {go_on}"
    )


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A warning as one line in our words, without the source line that raised it (``--debug`` keeps
    Python's format): a skipped image or a lossy conversion is news to the user; where in our code it was
    noticed is not."""
    return f"metrictransfer: warning: {message}\n"


def _own_words(err: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker, its own message without the
    worker's traceback that PyTorch puts before it ("Caught BadImageError in DataLoader worker process 0.
    Original Traceback ...": forty lines for one broken image)."""
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.strip().splitlines()[-1]  # "metrictransfer.errors.BadImageError: cannot read image ..."
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _report(debug: bool, message: str) -> None:
    if debug:
        traceback.print_exc()
    print(f"metrictransfer: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
