"""The guide "Serve a search" runs as written: its index and serve commands, then each of its curl
requests against the real server, with a run's stand-in (an untrained 16-d model, as glyphs-transfer's)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from metrictransfer.cli import main
from tests.helpers import make_checkpoint

pytest.importorskip("fastapi")
ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "serve.md"
FENCE = re.compile(r"^```bash\n(.*?)^```", flags=re.S | re.M)


def _commands(block: str) -> list[str]:
    """A bash block's commands, continuation lines joined, comments left out."""
    joined = re.sub(r"\|\s*\n\s*", "| ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("curl") is None, reason="the guide's requests are curl commands")
def test_the_serve_guide_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the guide's paths are the repository's (examples/gallery)
    build, requests = (_commands(b) for b in FENCE.findall(GUIDE.read_text())[:2])
    runs = tmp_path / "runs"
    checkpoint = make_checkpoint(runs / "glyphs-transfer.pt", dim=16)

    def local(command: str) -> str:
        return re.sub(r"(?<![\w/])runs/(glyphs-transfer\b)?", lambda m: str(checkpoint) if m[1] else f"{runs}/", command)

    index_command, serve_command = build
    assert main(shlex.split(local(index_command))[1:]) == 0  # ".venv/bin/metrictransfer index ..."
    port = _free_port()
    args = shlex.split(local(serve_command))[1:] + ["--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "metrictransfer.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() is not None else "no answer"
            time.sleep(0.2)
        assert len(requests) >= 5
        for command in requests:
            done = subprocess.run(
                ["bash", "-c", local(command).replace(":8000", f":{port}")], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (command, done.stderr)
            if " -o " in command:
                written = Path(local(command).split(" -o ")[1].split()[0])
                assert written.stat().st_size > 0
                continue
            answer = json.loads(done.stdout)
            assert "error" not in answer, (command, answer)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()
