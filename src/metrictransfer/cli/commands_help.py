"""What ``--help`` says of each command: one line for the command list, then what it does, what it writes
and prints, and the pages of docs/ that document it."""

from __future__ import annotations

import shutil
import textwrap
from typing import NamedTuple


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
        "list), without labels, with a label-free transfer loss (--loss; default queue_distill, a pseudo-classifier "
        "over a queue of source features, which led the losses tuned alike). Builds an ordinary transfer recipe; "
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
        "embed a gallery with a run's model for search, or update one",
        "Embed a gallery of images (a folder, sub-folders as classes, or a CSV of path[,label] and metadata columns) "
        "with a run's model, for metrictransfer search and serve, in a faiss index chosen from its size (--kind, "
        "--memory) whose recall against exact search is measured; or change a built index in place (--index DIR "
        "--add IMAGES / --remove IDS), atomically, with stable item ids.",
        "--out INDEX_DIR: vectors.npy, catalogue.sqlite (items, ids, metadata), index.json, model.onnx (the model, "
        "for fast searches; with onnx and onnxruntime installed) and faiss.index (with faiss); prints what it holds "
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
    "serve": Command(
        "an HTTP search service and web page for an index",
        "Serve searches of an index built by metrictransfer index over HTTP (an OpenAPI schema at /openapi.json): "
        "by uploaded image, by item id or by embeddings, with a web page at /. Binds to 127.0.0.1; another host "
        "needs --token.",
        "nothing; runs until interrupted (Ctrl-C)",
        "guides/serve.md",
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
