"""What each command does: a ``cmd_*`` function per command, which calls the library and prints what it
returns (``--json``: one JSON document on stdout)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Iterator

# Only light modules here: torch and the rest load inside the commands, where Ctrl-C is handled.
from metrictransfer.errors import ConfigError, command_options


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


#: ``train``'s options for the parameters of :func:`metrictransfer.api.train` its messages name.
_TRAIN_OPTIONS = {"resume": "--resume", "overrides": "--set"}


def cmd_train(args: argparse.Namespace) -> int:
    from metrictransfer import api
    from metrictransfer.config import RunConfig, load_config

    overrides = ([f"data.root={json.dumps(args.root)}"] if args.root else []) + list(args.set)  # quoted: any path
    overrides += [f"optim.on_nan={args.on_nan}"] if args.on_nan else []
    recipe: str | RunConfig | None = args.recipe
    if args.resume:  # api.train refuses a recipe with it first
        if not args.recipe and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume} continues that run in its own folder; --out {args.out} names another")
        run_dir = Path(args.resume)
    elif args.out or not args.recipe:  # without a recipe api.train says what to give
        run_dir = Path(args.out or ".")
    else:  # the run's folder is named after its recipe, read here once
        recipe, overrides = load_config(args.recipe, overrides), []
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun give the run folder with --out: every process must write to the same one")
        run_dir = Path(f"runs/{recipe.name or Path(args.recipe).stem}-{_timestamp()}")
    with _json_only(args), command_options(_TRAIN_OPTIONS):  # the report is written under the run's lock
        results, finished = api.train_or_answer(
            recipe, args.resume or run_dir, overrides=overrides, resume=bool(args.resume), overwrite=args.overwrite
        )
    return _print_trained(args, run_dir, results, already_finished=finished)


def _print_trained(args: argparse.Namespace, run_dir: Path, results: dict[str, Any], already_finished: bool = False) -> int:
    """Where the run's results and report are (by the first process only, under torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    report = run_dir / "report.md"
    if args.json:
        print(
            json.dumps(
                {
                    "run": str(run_dir),
                    "final": results.get("final"),
                    "results": str(run_dir / "results.json"),
                    "report": str(report),
                    "already_finished": already_finished,
                }
            )
        )
    elif already_finished:
        rebuild = "" if report.is_file() else f"; it has no report.md: metrictransfer report {run_dir}"
        print(f"{run_dir} already finished ({results['epochs']} epochs); its results: {run_dir / 'results.json'}{rebuild}")
    else:
        from metrictransfer.formatting import metrics_text

        final = metrics_text(results["final"], ", ")
        print(f"{run_dir}: trained {results['epochs']} epochs; final {final}; report: {report}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from metrictransfer import api

    options = {
        "eval_data": args.eval_data,
        "source_weights": args.source_weights,
        "source_features": args.source_features,
        "source_image_size": args.source_image_size,
        "target_pretrained": args.target_pretrained,
        "target_weights": args.target_weights,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "lr": args.lr,
        "seed": args.seed,
        "loss": args.loss,
        "overrides": list(args.set),
    }
    if args.print_recipe:
        import yaml

        from metrictransfer.config import config_to_dict
        from metrictransfer.distillation import distill_config

        config = distill_config(args.source, args.target, args.dim, args.images, **options)
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun give the run folder with --out: every process must write to the same one")
    run_dir = Path(args.out or f"runs/distill-{_timestamp()}")
    hint = None if args.json else [_resume_hint(run_dir)]
    with _json_only(args):  # the report is written under the run's lock: no --overwrite can start before it ends
        results = api.distill(
            args.source, args.target, args.dim, args.images, run_dir, overwrite=args.overwrite, extra_callbacks=hint, **options
        )
    return _print_trained(args, run_dir, results)


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
    from metrictransfer.retrieval.gallery import list_images

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
    from metrictransfer.evaluation.measure import measure
    from metrictransfer.formatting import percent

    options = {"ks": args.k, "metric": args.metric, "nmi": args.nmi, "backend": args.backend, "device": args.device}
    measured = measure(args.checkpoint, args.embeddings or (), args.query_gallery, args.model, progress=sys.stderr.isatty(), **options)
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
    from metrictransfer.retrieval import build_index
    from metrictransfer.runtime import distributed

    updating = args.add is not None or args.remove is not None
    if updating != (args.index is not None) or (args.index is not None and (args.out or args.images or args.checkpoint)):
        raise ConfigError(
            "index: build with --checkpoint RUN --images FOLDER --out DIR, or change a built one with --index DIR --add/--remove"
        )
    if not updating and not (args.checkpoint and args.images and args.out):
        raise ConfigError("index: a new index needs --checkpoint, --images and --out")
    with _json_only(args):
        if updating:
            from metrictransfer.retrieval.update import update_index

            meta = update_index(args.index, args.add, args.remove, _device(args.device), args.batch_size, progress=sys.stderr.isatty())
            args.out = args.index
        else:
            ranks, _ = distributed.setup("cpu")  # under torchrun: a build from an embeddings table, in shards
            try:
                meta = build_index(
                    args.checkpoint,
                    args.images,
                    args.out,
                    args.model,
                    _device(args.device),
                    args.batch_size,
                    progress=ranks.main and sys.stderr.isatty(),
                    overwrite=args.overwrite,
                    kind=args.kind,
                    memory=args.memory,
                )
            finally:
                distributed.teardown()
            if not ranks.main:
                return 0
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
                    "kind": meta["faiss"]["kind"] if meta["faiss"] else "exact",
                    "measured": meta["faiss"]["measured"] if meta["faiss"] else {"exact": True},
                    "generation": meta["generation"],
                    "query_model": bool(meta["query_model"]),
                }
            )
        )
        return 0
    engine = _engine_words(meta["faiss"]) if meta["faiss"] else "exact (numpy; pip install faiss-cpu for a faiss index)"
    if not meta["query_model"]:
        engine += ", queries embedded by PyTorch (pip install onnx onnxruntime and rebuild for faster searches)"
    labels = f"{len(meta['classes'])} classes" if meta["classes"] else "no labels"
    print(f"{args.out}: {meta['count']} images, {meta['dim']}-d, {meta['metric']}, {labels}, search: {engine}")
    return 0


def _engine_words(record: dict[str, Any]) -> str:
    """The faiss index in words: its kind and, for the approximate ones, the recall index measured."""
    measured = record.get("measured", {})
    if record.get("kind", "flat") == "flat":
        return "faiss flat (exact)"
    effort = "efSearch" if record["kind"] == "hnsw" else "nprobe"
    return (
        f"faiss {record['factory']}, recall@10 {measured.get('recall_at_10', 0):.3f} against exact search "
        f"({measured.get('queries')} held-out queries) at {effort} {record.get('effort')}"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from metrictransfer.model_export import description_path, export_model

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
    from metrictransfer.retrieval import Gallery

    if args.grid:
        from metrictransfer.engine.logging import figure_format

        figure_format(args.grid)  # a format matplotlib cannot write fails before the search, not after
    gallery = Gallery(args.index, args.checkpoint, args.device)  # resolved only if PyTorch embeds the queries
    effort = gallery.effort_for(args.nprobe, args.ef)
    results = gallery.search(args.queries, args.k, exclude_self=args.exclude_self, effort=effort, refine=args.refine, where=args.where)
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
                print(f"  {rank:3d}  {n.distance:.4f}  #{n.id}  {n.path}" + (f"  [{n.label}]" if n.label else ""))
    if args.grid:
        from metrictransfer.retrieval.grid import draw_grid

        draw_grid(args.queries, results, args.grid, query_labels)
        if not args.json:
            print(f"grid: {args.grid}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from metrictransfer.retrieval.serve import serve

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    serve(
        args.index,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get("METRICTRANSFER_TOKEN"),
        checkpoint=args.checkpoint,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        device=_device(args.device),
    )
    return 0


def _folder_label(path: str, classes: list[str]) -> str | None:
    """A query's class when its folder is named like one of the gallery's classes."""
    name = Path(path).parent.name
    return name if name in classes else None


def _device(name: str) -> str:
    from metrictransfer.runtime.device import resolve_device

    return str(resolve_device(name))
