import os
import sys
from pathlib import Path

import pytest
import torch

# Tests mirror the package layout (tests/losses/ for metrictransfer/losses/, ...). Some build their data with
# another folder's helpers (``from test_dataset_layouts import _write``): every folder is importable by name.
HERE = Path(__file__).resolve().parent
for folder in sorted(p for p in HERE.iterdir() if p.is_dir() and any(p.glob("test_*.py"))):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Demo data built by the tests goes to a temporary cache, not the user's."""
    old = os.environ.get("METRICTRANSFER_CACHE")
    os.environ["METRICTRANSFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
    if old is None:
        os.environ.pop("METRICTRANSFER_CACHE", None)
    else:
        os.environ["METRICTRANSFER_CACHE"] = old
