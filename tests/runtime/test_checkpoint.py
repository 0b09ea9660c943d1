import pytest
import torch

from metrictransfer.runtime import checkpoint
from metrictransfer.runtime.checkpoint import atomic_save, load_checkpoint


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"format": checkpoint.FORMAT_VERSION, "epoch": 1}, path)

    def crash_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": checkpoint.FORMAT_VERSION, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a metrictransfer checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
