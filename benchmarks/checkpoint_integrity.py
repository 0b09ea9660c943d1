"""What verified checkpoints cost: writing with a content checksum and loading with its verification,
against a plain atomic ``torch.save`` and a plain ``torch.load(weights_only=True)`` of the same state.

The state is a training checkpoint of the given backbone with a 512-d head and AdamW's moments (three
copies of the weights, as ``checkpoint.pt`` holds them). Times are medians of --repeats runs, measured
side by side in one process; the file goes to --work (a temporary folder by default: its disk matters).

    .venv/bin/python -m benchmarks.checkpoint_integrity [--backbone resnet50] [--repeats 5]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.common import median_seconds, parser, write_results
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import FORMAT_VERSION, atomic_save, content_digest, load_checkpoint, save_checkpoint


def training_state(backbone: str) -> dict:
    model = EmbeddingModel(backbone, 512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # fills the moments
    return {"format": FORMAT_VERSION, "models": {"model": model.state_dict()}, "optimizers": {"model": optimizer.state_dict()}, "step": 1}


def main() -> None:
    options = parser(__doc__, name="checkpoint_integrity")
    options.add_argument("--backbone", default="resnet50")
    options.add_argument("--repeats", type=int, default=5)
    options.add_argument("--work", help="folder for the checkpoint files (default: a temporary folder)")
    args = options.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="checkpoint_integrity-"))
    state = training_state(args.backbone)
    plain, verified = work / "plain.pt", work / "verified.pt"
    rows = {
        "write: atomic torch.save": median_seconds(lambda: atomic_save(state, plain), args.repeats),
        "write: + content checksum": median_seconds(lambda: save_checkpoint(state, verified), args.repeats),
        "checksum alone": median_seconds(lambda: content_digest(state), args.repeats),
        "load: torch.load(weights_only)": median_seconds(lambda: torch.load(plain, weights_only=True), args.repeats),
        "load: + verification": median_seconds(lambda: load_checkpoint(verified), args.repeats),
    }
    megabytes = verified.stat().st_size / 2**20
    write_ratio = rows["write: + content checksum"] / rows["write: atomic torch.save"]
    load_ratio = rows["load: + verification"] / rows["load: torch.load(weights_only)"]
    lines = [
        f"# Verified checkpoints: what the checksum costs ({args.backbone}, 512-d head, AdamW state, {megabytes:.0f} MB)",
        "",
        f"Files in {'a temporary folder' if not args.work else args.work}; medians of {args.repeats} runs",
        "",
        "| operation | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.3f} |" for name, seconds in rows.items()],
        "",
        f"Writing with the checksum takes {write_ratio:.2f}× a plain atomic save; loading with verification "
        f"{load_ratio:.2f}× a plain weights-only load.",
    ]
    record = {"backbone": args.backbone, "megabytes": megabytes, "seconds": rows, "write_ratio": write_ratio, "load_ratio": load_ratio}
    write_results(args.name, lines, record, rerun=f"checkpoint_integrity --backbone {args.backbone} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
