"""`taskfleet models download flux` without a reachable Hub: one line naming the host, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("host", ["127.0.0.1", "hub.invalid"])
def test_an_unreachable_hub_fails_in_one_line_naming_it(tmp_path, host):
    # This folder's conftest sets HF_HUB_OFFLINE for the server tests; the command must go online.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://{host}:{closed_port()}", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "taskfleet.cli", "models", "download", "flux", "--dest", str(tmp_path / "flux")],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot reach {host}: ")
    assert proc.stdout == ""
