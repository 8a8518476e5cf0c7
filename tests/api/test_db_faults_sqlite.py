"""SQLite under a full disk and a locked file: 503 with a code (never 500), no corruption, no
accepted task lost, and back by itself once space (or the lock) returns.

The full disk is a real one: a small tmpfs mounted for the test (root may mount here, as on CI).
Where mounting is not permitted the test says so and skips: nothing else fills a disk honestly.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from support import api_process


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def create(http: httpx.Client, n: int) -> httpx.Response:
    return http.post("/api/tasks", json={"workflow": "echo", "input": {"data": {"pad": "x" * 2000, "n": n}}})


def test_a_full_disk_answers_503_database_full_and_recovers_when_space_returns(small_disk, tmp_path):
    db = small_disk / "tasks.db"
    accepted: list[str] = []
    with api_process(f"sqlite:///{db}", tmp_path) as api, httpx.Client(base_url=api.url, trust_env=False, timeout=30) as http:
        for n in range(20):
            answer = create(http, n)
            assert answer.status_code == 201
            accepted.append(answer.json()["task_id"])
        filler = fill(small_disk)
        answers = []
        for n in range(20, 400):  # free pages and the log's room go first; then the disk is full
            answer = create(http, n)
            answers.append((answer.status_code, answer.json().get("error", {}).get("code")))
            if answer.status_code == 201:
                accepted.append(answer.json()["task_id"])
            elif len([a for a in answers if a[0] == 503]) >= 5:
                break
        assert set(answers) <= {(201, None), (503, "database_full")}, set(answers)
        assert (503, "database_full") in answers
        full = create(http, 999)
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert http.get("/health").status_code == 200
        assert http.get(f"/api/tasks/{accepted[0]}").status_code == 200  # reads still answer

        os.unlink(filler)  # space returns
        back = create(http, 1000)
        assert back.status_code == 201, back.text
        accepted.append(back.json()["task_id"])
        for task_id in accepted:
            assert http.get(f"/api/tasks/{task_id}").status_code == 200  # nothing accepted was lost
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(accepted)


def test_a_locked_database_file_answers_503_and_recovers_when_released(tmp_path):
    db = tmp_path / "tasks.db"
    with api_process(f"sqlite:///{db}", tmp_path) as api, httpx.Client(base_url=api.url, trust_env=False, timeout=30) as http:
        assert create(http, 0).status_code == 201
        other = sqlite3.connect(db, isolation_level=None)  # another process's tool holding the write lock
        try:
            other.execute("BEGIN EXCLUSIVE")
            locked = create(http, 1)  # waits out SQLite's busy timeout first
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert locked.status_code == 503, locked.text
        assert locked.json()["error"]["code"] == "database_unavailable" and locked.headers["retry-after"] == "1"
        assert create(http, 2).status_code == 201
        assert len(http.get("/api/tasks").json()["items"]) == 2
