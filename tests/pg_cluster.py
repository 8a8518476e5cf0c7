"""A private Postgres cluster for tests that restart or stop their database.

The machine's shared server (``support.PG_ADMIN_URL``) serves every other test at the same time,
so a test that takes the database away starts its own: ``initdb`` into a temporary folder, on a
free port, as the ``postgres`` user (Postgres refuses to run as root), stopped and removed after.
Debian's postgresql-15 is where ``PG_BIN`` points; ``TASKFLEET_TEST_PG_BIN`` overrides it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from support import free_port

PG_BIN = Path(os.environ.get("TASKFLEET_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivateCluster:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.data = folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.folder}'\n"
                "fsync = off\nmax_connections = 100\n"
            )

    def pg_ctl(self, *args: str) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.folder / "server.log", "-w", *args)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is terminated, the server is back when it returns."""
        self.pg_ctl("restart", "-m", "fast")

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    folder = Path(tempfile.mkdtemp(prefix="tf_pg_"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    cluster = PrivateCluster(folder, free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster._as_postgres(PG_BIN / "pg_ctl", "-D", cluster.data, "stop", "-m", "immediate", check=False)
        shutil.rmtree(folder, ignore_errors=True)
