"""Agreement with the source: how far a target reproduces its source's neighbourhoods, without labels.

``agreement@k`` is the mean, over images, of the share of an image's k nearest neighbours under the source
that are also among its k nearest neighbours under the target (the image itself excluded; 1: every
neighbourhood kept, k / (N - 1): no better than chance). It is what a label-free transfer can be evaluated
on when the user has no labelled images: retrieval with the target then returns what the source would.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.data.transforms import build_transform, feed_each
from metrictransfer.errors import ConfigError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.knn import pair_distances, prepare

#: (image size, normalization) of a model's input.
Feed = tuple[int, str]

#: Rows of the distance matrix computed at once (bounds memory at BLOCK × N distances).
BLOCK = 1024

#: Held-out sets of fewer images, or whose chance level k / (N - 1) is above NOISY_CHANCE, give a noisy
#: agreement: a warning at the start.
FEW_IMAGES = 100
NOISY_CHANCE = 0.2


def check_agreement_ranks(ks: Sequence[int], images: int, total: int, share: str, setting: str = "eval.agreement_at") -> None:
    """Refuse agreement@k on ``images`` held-out images (of ``total``, held out by the ``share`` key, e.g.
    ``data.holdout_images=0.1``) when k >= N - 1: every other image is then among both models' k nearest,
    so agreement is 1.0 whatever the model. Warn, once at the start, when the set is small or its chance
    level k / (N - 1) high: the figure then moves a lot with chance."""
    k, n = max(ks), images
    key = share.partition("=")[0]
    held = f"{share} holds out {n:,} of {total:,} images"
    if k >= n - 1:
        wanted = k + 2
        fraction = math.ceil(100 * wanted / total) / 100 if total else 1.0
        if key.endswith(".folds"):  # a fold holds out 1/K of the images: fewer folds, larger ones
            fixes = [f"lower {key}"]
        else:
            fixes = [f"raise {key} (to {fraction:g})" if fraction < 1 else "add images"]
        if n >= 3:
            fixes.append(f"lower {setting} to at most {n - 2}")
        raise ConfigError(
            f"{setting} {k} on {n:,} held-out images measures nothing ({held}): every other image is among the "
            f"{k} nearest, so agreement@{k} would be 1.0 whatever the model; hold out at least {wanted} images: "
            f"{' or '.join(fixes)}, or evaluate on labelled images (eval.data; distill --eval-data)"
        )
    chance = k / (n - 1)
    if n < FEW_IMAGES or chance > NOISY_CHANCE:
        warnings.warn(
            f"agreement@{k} on {n:,} held-out images is noisy ({held}): its chance level, {k}/{n - 1}, is "
            f"{chance:.0%}; hold out more images (at least {FEW_IMAGES}: {'lower' if key.endswith('.folds') else 'raise'} {key}) "
            f"or lower {setting}",
            stacklevel=3,
        )


def nearest_neighbours(embeddings: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    """The indices (N × k) of each row's k nearest other rows, nearest first; ties broken by lower index."""
    n = len(embeddings)
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and N - 1 = {n - 1}, got {k}")
    x = prepare(embeddings, metric)
    squared = (x * x).sum(dim=1) if metric == "euclidean" else None
    found = []
    for start in range(0, n, BLOCK):
        rows = slice(start, min(start + BLOCK, n))
        dist = pair_distances(x[rows], x, None if squared is None else squared[rows], squared)
        own = torch.arange(rows.start, rows.stop)
        dist[own - start, own] = float("inf")  # an image is not its own neighbour
        # a stable sort breaks ties by index, so the answer does not depend on the block size
        found.append(torch.sort(dist, dim=1, stable=True).indices[:, :k])
    return torch.cat(found)


def neighbour_agreement(
    target: torch.Tensor, source: torch.Tensor, ks: list[int], target_metric: str, source_metric: str = "cosine"
) -> dict[str, float]:
    """``agreement@k`` for each k in ``ks``: target and source embeddings of the same N images, in the
    same order (the source compared by cosine similarity by default, as foundation models' features are)."""
    if len(target) != len(source):
        raise ValueError(f"target and source embeddings must be of the same images: {len(target)} and {len(source)} rows")
    top = min(max(ks), len(target) - 1)
    ours, theirs = nearest_neighbours(target, top, target_metric), nearest_neighbours(source, top, source_metric)
    scores = {}
    for k in sorted(set(ks)):
        k_eff = min(k, top)
        shared = (ours[:, :k_eff].unsqueeze(2) == theirs[:, :k_eff].unsqueeze(1)).any(dim=2).sum(dim=1)
        scores[f"agreement@{k}"] = float(shared.float().mean() / k_eff)
    return scores


class _FedPair(nn.Module):
    """Target and source side by side on the same plain-RGB view, each resized and normalised its own way."""

    def __init__(self, target: nn.Module, source: nn.Module, feeds: tuple[Feed, Feed] | None) -> None:
        super().__init__()
        self.target, self.source, self.feeds = target, source, feeds
        self.target_dim = 0  # known after the first batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        target_images = source_images = images
        if self.feeds is not None:
            target_images, source_images = feed_each(images, self.feeds)
        ours = self.target(target_images).float()
        self.target_dim = ours.shape[1]
        return torch.cat([ours, self.source(source_images).float()], dim=1)


def evaluate_agreement(
    target: nn.Module,
    source: nn.Module,
    images: RetrievalDataset,
    transform: str,
    target_feed: Feed,
    source_feed: Feed,
    ks: list[int],
    metric: str,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """``agreement@k`` of a target with its source on ``images`` (yielding ``(image, label)``), both fed the
    same test-time view (the ``transform``'s deterministic one, at the larger of the two input sizes when
    they differ, then each model's size and normalisation)."""
    feeds: tuple[Feed, Feed] | None = None
    size, normalization = target_feed
    if source_feed != target_feed:
        feeds, size, normalization = (target_feed, source_feed), max(target_feed[0], source_feed[0]), "none"
    views = MultiViewDataset(images, build_transform(transform, False, size, normalization))
    pair = _FedPair(target, source, feeds)
    embeddings, _ = extract_embeddings(pair, views, batch_size, device, num_workers, progress=progress, desc="agreement")
    return neighbour_agreement(embeddings[:, : pair.target_dim], embeddings[:, pair.target_dim :], ks, metric)
