"""Query images embedded by a run's PyTorch model, checked to be the model that built the index.

The fallback of :mod:`.onnx_model`: for indexes without an exported model (onnxruntime missing when it
was built, or a transform an export cannot describe), and when ``search --checkpoint`` names the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.errors import SearchIndexError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.evaluate import with_test_transform
from metrictransfer.runtime.checkpoint import load_embedding_model, model_fingerprint
from metrictransfer.runtime.device import resolve_device


class CheckpointQueryModel:
    """A run's model (``name``: a cohort's member), refused unless its weights and metric are the index's."""

    def __init__(self, checkpoint: Path, name: str | None, meta: dict[str, Any], index_dir: Path, rebuild: str, device: str) -> None:
        self.model, self.config = load_embedding_model(checkpoint, name=name)
        if model_fingerprint(self.model) != meta["fingerprint"]:
            raise SearchIndexError(
                f"the index {index_dir} was built by a different model than {checkpoint} (its weights differ); {rebuild}"
            )
        if self.config.eval.metric != meta["metric"]:
            raise SearchIndexError(
                f"{index_dir / 'index.json'} says metric {meta['metric']!r} but the model in "
                f"{checkpoint} measures {self.config.eval.metric!r}; {rebuild}"
            )
        self.device = str(resolve_device(device))

    def embed(self, paths: list[Path], bad_hint: str) -> np.ndarray:
        """One embedding per image file, in order."""
        listed = ImageIndex(Path("/"), [str(p) for p in paths], np.full(len(paths), -1), [])
        images = with_test_transform(ImageFolderDataset(listed, bad_hint=bad_hint), self.config.data)
        return extract_embeddings(self.model.to(self.device), images, 128, self.device)[0].numpy()
