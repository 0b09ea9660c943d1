import os

import pytest
import torch


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
