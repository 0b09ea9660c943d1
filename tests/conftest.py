"""Session-wide set-up: the demo data cache, and every temporary file of the tests and of the processes they
start under pytest's own temporary folder, with a check that the run leaves the system's temporary folder
as it found it. Helpers shared by test modules live in tests/helpers.py (``from tests.helpers import ...``)."""

import os
import re
import tempfile

import pytest
import torch

# What the suite or the processes it starts would leave in the system's temporary folder if TMPDIR were not
# redirected: tempfile's folders and files, multiprocessing's, torchrun's logs, torch.compile's caches, ours.
OURS = re.compile(r"^(tmp|pymp-|torchelastic_|torchinductor_|triton|metrictransfer|matplotlib-)")
SYSTEM_TEMP = tempfile.gettempdir()
_before: set[str] = set()


def _entries() -> set[str]:
    try:
        return set(os.listdir(SYSTEM_TEMP))
    except OSError:
        return set()


_restore: dict[str, str | None] = {}


def pytest_sessionstart(session):
    """Record the system's temporary folder, then send tempfile's folder, here and in every process a test
    starts (TMPDIR is inherited: torchrun's logs, multiprocessing's pymp-* folders, the docs examples'
    mkdtemp()), and torch.compile's cache under pytest's basetemp, which pytest removes after a passing run
    and prunes after a failing one. Before collection: importing torch._dynamo settles inductor's cache
    folder, and test modules import it."""
    _before.update(_entries())
    folder = str(session.config._tmp_path_factory.mktemp("tmp"))  # the tmp_path_factory fixture's, before fixtures exist
    redirected = {"TMPDIR": folder, "TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "torchinductor")}
    _restore.update({key: os.environ.get(key) for key in redirected})
    os.environ.update(redirected)
    tempfile.tempdir = folder


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if it left something of ours in the system's temporary folder (CI once died of a full
    disk): an entry that was not there when the session started and whose name is one of OURS. Entries other
    processes own (a lock, another tool's folder) are not ours and not counted."""
    tempfile.tempdir = None
    for key, value in _restore.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    left = sorted(name for name in _entries() - _before if OURS.match(name))
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"the tests left {len(left)} entries in {SYSTEM_TEMP}: {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}",
        "write under tmp_path (or tmp_path_factory); a test that starts a process passes it the environment,"
        " whose TMPDIR points under pytest's own temporary folder",
    ]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
