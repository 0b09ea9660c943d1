"""A finished run's report: ``report.md`` with its final metrics, and the plots people look at first.

- ``curves.png``: every logged loss, and Recall@1 (accuracy for classifiers) of every model per epoch;
- ``retrieval.png``: a few test queries and their nearest test images (green: same class), each named by
  its file and class;
- ``embedding_map.png``: the test embeddings in 2-D (UMAP when installed, else t-SNE), coloured by class,
  with a legend of the classes beside the map.

Built from the run folder alone (config, log, results, checkpoint), so ``metrictransfer report RUN``
rebuilds it at any time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from metrictransfer.config import RunConfig, load_config
from metrictransfer.data.holdout import split_holdout
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.workers import embedding_workers
from metrictransfer.engine.logging import plot_training, primary_metric, save_figure
from metrictransfer.errors import MissingFileError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.evaluate import test_dataset, with_test_transform
from metrictransfer.io import atomic_write_text
from metrictransfer.readback import read_results
from metrictransfer.registry import METHODS
from metrictransfer.retrieval.gallery import Neighbour
from metrictransfer.retrieval.grid import draw_grid, file_name, middle_ellipsis
from metrictransfer.runtime.checkpoint import load_embedding_model
from metrictransfer.runtime.device import resolve_device

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from PIL import Image


def write_report(
    run_dir: str | Path,
    queries: int = 6,
    neighbours: int = 6,
    map_points: int = 1500,
    seed: int = 0,
    query_items: list[int] | None = None,
) -> Path:
    """Write ``report.md`` and its plots into ``run_dir``; returns the report's path. The retrieval grid
    shows ``queries`` test items drawn with ``seed`` (:func:`pick_queries`), or exactly ``query_items``
    (indices into the test split) when given: several runs on the same data then show the same queries."""
    run = Path(run_dir)
    results_file = run / "results.json"
    if not results_file.is_file():
        raise MissingFileError(f"{run} has no results.json: the run has not finished (resume it with metrictransfer train --resume {run})")
    results = read_results(run)
    config = load_config(run / "config.yaml")
    history = results["history"]
    plot_training(history, run / "curves.png")
    sections = [
        f"# {config.name or run.name}",
        "",
        _summary(config),
        "",
        "## Final metrics (last epoch, " + ("held-out images" if primary_metric(history).startswith("agreement@") else "test split") + ")",
        "",
        *_metrics_table(results),
        "",
        "![training curves](curves.png)",
        "",
    ]
    chosen = results.get("best")
    if results.get("selection") == "validation" and chosen:
        test = chosen["test"]
        shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in test.items() if "/" not in k)
        sections += [
            f"The curves are the validation data's (held out of the training split). Best model by validation "
            f"{chosen['metric']}: epoch {chosen['epoch']} (`best.pt`); on the test split: {shown}.",
            "",
        ]
    best = results.get("best_epoch_selected_on_test_split")
    if best:
        by = "held-out images" if primary_metric(history).startswith("agreement@") else "test split"
        sections += [f"Best epoch by the {by} (for reference only: choosing it looks at the evaluation data): {best['epoch']}.", ""]
    if METHODS.get(config.method).reports_recall:  # a classifier is measured by accuracy: no retrieval to show
        sections += _retrieval_sections(run, config, queries, neighbours, map_points, seed, query_items)
    path = run / "report.md"
    atomic_write_text("\n".join(sections), path)
    return path


def _summary(config: RunConfig) -> str:
    m = config.model
    data = config.data
    return (
        f"Method `{config.method}`, backbone `{m.backbone}`, {m.embedding_dim}-d embeddings, data `{data.dataset}`"
        f" ({data.image_size} px), {config.optim.epochs} epochs, seed {config.seed}."
    )


def _metrics_table(results: dict[str, Any]) -> list[str]:
    final = results["final"]
    models = sorted({k.split("/")[0] for k in final if "/" in k})
    names = sorted({k.rsplit("/", 1)[-1] for k in final}, key=lambda k: (not k.startswith("recall@"), len(k), k))
    rows = models or ["run"]
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for model in rows:
        keys = [f"{model}/{n}" if models else n for n in names]
        lines.append(f"| {model} | " + " | ".join(f"{100 * final[k]:.1f}" if k in final else "–" for k in keys) + " |")
    return lines


def _query_candidates(dataset: RetrievalDataset) -> np.ndarray:
    is_query = dataset.is_query  # query-vs-gallery data (In-Shop): queries search the gallery only
    return np.flatnonzero(is_query) if is_query is not None else np.arange(len(dataset))


def shown_images(config: RunConfig) -> tuple[MultiViewDataset, bool]:
    """The images a report embeds, with the test-time preprocessing, and whether they are labelled: the test
    split, or, for a run on unlabelled images evaluated by agreement with its source, the images it held out."""
    data = config.data
    if config.eval.data is None and data.holdout_images > 0:
        train = build_dataset(data, "train")
        if (np.asarray(train.labels) < 0).all():
            return with_test_transform(split_holdout(train, data.holdout_images)[1], data), False
    return test_dataset(config), True


def pick_queries(config: RunConfig, queries: int = 6, seed: int = 0) -> list[int]:
    """The test items (indices into the run's test split) a report shows as retrieval queries: ``queries``
    of them drawn with ``seed`` from the split's queries (all its items where it has no query/gallery split)."""
    dataset, _ = shown_images(config)
    candidates = _query_candidates(dataset)
    return [int(i) for i in np.random.default_rng(seed).choice(candidates, size=min(queries, len(candidates)), replace=False)]


def _retrieval_sections(
    run: Path, config: RunConfig, queries: int, neighbours: int, map_points: int, seed: int, query_items: list[int] | None
) -> list[str]:
    # on the run's device (a GPU when it trained on one and one is here), decoded by its loader workers: on
    # the CPU in one process, a CUB-sized test split took minutes at the end of every GPU run (docs: GPU check)
    device = resolve_device("cpu" if config.device == "cuda" and not torch.cuda.is_available() else config.device)
    model, _ = load_embedding_model(run, map_location=device)
    dataset, labelled = shown_images(config)
    split = "test" if labelled else "held-out"
    workers = embedding_workers(len(dataset), config.eval.batch_size, config.data.num_workers)
    # rows: the dataset index of each embedding (an unreadable image skipped with data.skip_bad_images has none)
    embeddings, labels, rows = extract_embeddings(model, dataset, config.eval.batch_size, device, workers, return_indices=True)
    classes: list[str | None] = list(dataset.classes or []) or [str(c) for c in range(int(labels.max()) + 1)]
    if not labelled:
        labels, classes = torch.zeros_like(labels), [None]
    is_query, is_gallery = dataset.is_query, dataset.is_gallery
    row_of = {int(item): row for row, item in enumerate(rows.tolist())}

    def to_rows(items: Any) -> np.ndarray:
        return np.asarray([row_of[int(i)] for i in items if int(i) in row_of], dtype=np.int64)

    candidates = to_rows(_query_candidates(dataset))
    gallery = to_rows(np.flatnonzero(is_gallery)) if is_query is not None and is_gallery is not None else np.arange(len(embeddings))
    if query_items is not None:
        query_items = [row_of[int(i)] for i in query_items if int(i) in row_of]  # the chosen items that were read
    if query_items is None:
        rng = np.random.default_rng(seed)
        picked = rng.choice(candidates, size=min(queries, len(candidates)), replace=False)
        chosen = f"{len(picked)} random {split} queries (seed {seed})"
    else:
        outside = sorted(set(query_items) - set(candidates.tolist()))
        if outside:
            raise ValueError(f"query items {outside} are not queries of {run}'s {split} images ({len(candidates)} candidates)")
        picked = np.asarray(query_items, dtype=np.int64)
        chosen = f"{len(picked)} chosen {split} queries"
    distances = torch.full((len(picked), len(embeddings)), float("inf"))
    distances[:, gallery] = torch.cdist(embeddings[picked], embeddings[gallery])
    distances[torch.arange(len(picked)), torch.as_tensor(picked)] = float("inf")  # a query is not its own neighbour
    k = min(neighbours, len(gallery) - (0 if is_query is not None else 1))
    nearest = distances.topk(k, dim=1, largest=False)
    names = [f"item:{i}" for i in rows.tolist()]  # dataset indices: what load() reads
    found = [
        [Neighbour(names[j], float(d), classes[int(labels[j])]) for d, j in zip(row_d, row_i)]
        for row_d, row_i in zip(nearest.values.tolist(), nearest.indices.tolist())
    ]

    files = dataset.item_names if dataset.root is not None else None  # the generated glyphs have none

    def load(name: str) -> Image.Image:  # the image as the dataset gives it, before the test transform
        return cast("Image.Image", dataset.dataset[int(name.split(":")[1])][0])

    def title(name: str) -> str:
        item = int(name.split(":")[1])
        return file_name(files[item]) if files is not None else f"item {item}"

    query_classes = [classes[int(labels[i])] for i in picked]
    draw_grid([names[i] for i in picked], found, run / "retrieval.png", query_classes, load=load, name=title)
    shown_classes = cast("list[str]", classes) if labelled else None
    method = _embedding_map(embeddings.numpy(), labels.numpy(), run / "embedding_map.png", map_points, seed, split, shown_classes)
    colours = "; green: same class, red: another class" if labelled else " (no labels: no colours)"
    return [
        "## Retrieval",
        "",
        f"{chosen} and their {k} nearest "
        + ("gallery images" if is_query is not None else f"{split} images")
        + f", nearest first, with their {'file names' if files is not None else 'item numbers'} and distances{colours}.",
        "",
        f"Query items ({'test split' if labelled else 'held-out images'}): {', '.join(str(int(i)) for i in picked)}.",
        "",
        "![retrieval](retrieval.png)",
        "",
        "## Embedding map",
        "",
        f"{split.capitalize()} embeddings in 2-D by {method}" + (", coloured by class (named in the legend)." if labelled else "."),
        "",
        "![embedding map](embedding_map.png)",
        "",
    ]


def _embedding_map(
    x: np.ndarray, labels: np.ndarray, out: Path, points: int, seed: int, split: str = "test", classes: list[str] | None = None
) -> str:
    """2-D layout of (at most ``points``) embeddings: UMAP when installed, t-SNE from scikit-learn otherwise
    (PCA for fewer than 5 points); a legend beside it names ``classes`` (indexed by label) when given."""
    import matplotlib.pyplot as plt

    if len(x) > points:
        keep = np.random.default_rng(seed).choice(len(x), points, replace=False)
        x, labels = x[keep], labels[keep]
    if len(x) < 5:  # too few points for a neighbourhood embedding: the first two principal axes
        centred = x - x.mean(axis=0)
        axes = np.linalg.svd(centred, full_matrices=False)[2][:2]
        xy, method = np.pad(centred @ axes.T, ((0, 0), (0, 2 - len(axes)))), "PCA"
    else:
        xy, method = _neighbourhood_layout(x, seed)
    fig, ax = plt.subplots(figsize=(6 if classes is None else 8, 6), dpi=120)
    _scatter_by_class(ax, xy, labels, classes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{split} embeddings ({method})" + (f", {len(np.unique(labels))} classes" if split == "test" else ""))
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return method


LEGEND_CLASSES = 10  # beyond LEGEND_CLASSES + 2 classes the legend names this many and counts the rest


def _scatter_by_class(ax: Axes, xy: np.ndarray, labels: np.ndarray, classes: list[str] | None) -> None:
    """Points coloured by class: one tab10 colour each up to 10 classes (distinct hues), tab20 up to 20,
    evenly spread shades of tab20 beyond (neighbouring classes then look alike). The legend, outside the axes
    so it hides no point, names every class, or the most frequent ones and how many more there are."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    present, rank, counts = np.unique(labels, return_inverse=True, return_counts=True)
    count = len(present)
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")(np.arange(count) if count <= 20 else np.linspace(0, 1, count))
    ax.scatter(xy[:, 0], xy[:, 1], c=palette[rank], s=6)
    if classes is None:
        return
    many = count > LEGEND_CLASSES + 2
    named = sorted(range(count), key=lambda r: (-counts[r], r))[: LEGEND_CLASSES if many else count]
    handles = [
        Line2D([], [], ls="", marker="o", markersize=5, color=palette[r], label=middle_ellipsis(classes[int(present[r])], 28))
        for r in named
    ]
    if many:
        handles.append(Line2D([], [], ls="", label=f"{count - len(named)} more classes" + (" (colours repeat)" if count > 20 else "")))
    title = "most frequent classes" if many else "classes"
    ax.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
        borderaxespad=0,
        fontsize=7,
        title_fontsize=8,
        frameon=False,
    )


def _neighbourhood_layout(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """UMAP when installed, t-SNE from scikit-learn otherwise."""
    try:
        import umap

        return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        # 500 iterations, not 1,000: half the time (the three reports' maps were 12 s of the demo), and on
        # 1,500 clustered points the final KL divergence rose only from 0.14 to 0.18
        tsne = TSNE(perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
        return tsne.fit_transform(x), "t-SNE"
