"""One training step of a method on a fixed global batch, for test_distributed.py.

Run by torchrun, each rank takes its slice of the batch (as the trainer's sampler gives it); run directly,
one process takes the whole batch. The first rank saves the loss and every parameter's gradient, after the
gradient averaging the trainer does before an optimiser step.

    python tests/runtime/distributed_step.py CONFIG.json OUT.pt [CONFIG.json OUT.pt ...]
    torchrun --nproc_per_node 2 tests/runtime/distributed_step.py CONFIG.json OUT.pt [...]

Several (configuration, output) pairs share one launch: the processes' start-up is most of its time.
"""

from __future__ import annotations

import json
import sys

import torch

from metrictransfer.config import build_config
from metrictransfer.methods import METHODS
from metrictransfer.runtime import distributed

IMAGES, NUM_CLASSES = 16, 8  # the global batch: 8 classes × 2 images


def global_batch(streams: int, views: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images as the trainer flattens them (image, stream, view), labels and image indices per row."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(IMAGES * streams * views, 3, 32, 32, generator=g)
    per_image = torch.arange(NUM_CLASSES).repeat_interleave(IMAGES // NUM_CLASSES)
    rows = streams * views
    return images, per_image.repeat_interleave(rows), torch.arange(IMAGES).repeat_interleave(rows)


def one_step(raw: dict) -> dict:
    ranks, _ = distributed.setup("cpu")
    config = build_config(raw)
    torch.manual_seed(config.seed)
    method = METHODS[config.method](config, NUM_CLASSES)
    method.prepare_training_set(range(IMAGES))
    method.train()
    streams = len(method.train_transforms(config.data))
    images, labels, indices = global_batch(streams, config.data.views)
    part = len(images) // ranks.world
    mine = slice(ranks.rank * part, (ranks.rank + 1) * part)
    torch.manual_seed(123)  # miners and memory banks draw the same numbers on every rank
    loss, _ = method.training_loss(images[mine], labels[mine], indices[mine])
    loss.backward()
    distributed.average_gradients([p for p in method.parameters() if p.requires_grad])
    return {
        "loss": loss.detach(),
        "grads": {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None},
    }


if __name__ == "__main__":
    for config_file, out in zip(sys.argv[1::2], sys.argv[2::2]):
        result = one_step(json.loads(open(config_file).read()))
        if distributed.current().main:
            torch.save(result, out)
    distributed.teardown()
