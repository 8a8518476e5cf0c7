"""Scratch folders: what a killed process leaves is removed by the next one to start on the same
root; a live owner's folder is never touched. Real processes, real SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from support import api_process, consumer_process
from taskfleet.scratch import LOCK_SUFFIX, Scratch

HOLDER = """
import sys, time
from taskfleet.scratch import Scratch
s = Scratch(sys.argv[1], "holder")
path = s.open()
(path / "big.bin").write_bytes(b"x" * 1024)
print(path, flush=True)
time.sleep(600)
"""


def start_holder(root: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_owners_folder_is_swept_and_a_live_ones_kept(tmp_path):
    root = tmp_path / "scratch"
    dead, dead_path = start_holder(root)
    alive, alive_path = start_holder(root)
    try:
        dead.kill()
        dead.wait()
        assert (dead_path / "big.bin").exists()  # SIGKILL ran no cleanup

        mine = Scratch(root, "test")
        path = mine.open()
        assert not dead_path.exists() and not (root / f"{dead_path.name}{LOCK_SUFFIX}").exists()
        assert (alive_path / "big.bin").exists()  # its owner still holds the lock
        job = mine.mkdtemp("job-")
        assert job.parent == path
        mine.close()
        assert not path.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_consumer_removes_what_a_killed_consumer_left(tmp_path):
    work = tmp_path / "work"
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path) as api:
        first = consumer_process(api.url, tmp_path, "echo").start()
        [left] = [p for p in work.iterdir() if p.is_dir()]
        (left / "task-attempt").mkdir()
        (left / "task-attempt" / "frames.raw").write_bytes(b"\0" * 4096)
        first.kill()

        with consumer_process(api.url, tmp_path, "echo") as second:
            deadline = time.monotonic() + 10
            while left.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not left.exists()
            alive = [p for p in work.iterdir() if p.is_dir()]
            assert len(alive) == 1 and alive[0].name.startswith("consumer-")
            second.terminate()
        assert not any(p.is_dir() for p in work.iterdir())  # a clean stop removes its own folder
