"""Upload + download of a large file through each storage backend: MB/s and peak RSS growth.

    python bench/storage_bench.py                 # 2 GB through local, S3 (moto), GCS (emulator)
    python bench/storage_bench.py --size-mb 256 --backends s3

Each backend runs in a fresh child process so its peak RSS is its own; the servers (moto, the
GCS emulator) run as separate processes and are not counted. The test file is written to /tmp
and removed afterwards. Target: RSS growth <= 100 MB for any file size.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.args}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start: {proc.args}")


def _write_test_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with open(path, "wb") as fh:
        written = 0
        i = 0
        while written < size:
            chunk = (i.to_bytes(8, "big") + block[8:])[: size - written]
            fh.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            i += 1
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Peak resident memory of this process from now on: resets the kernel's high-water mark
    (clear_refs 5) and also samples, in case the reset is not permitted."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.start_kb = _status_kb("VmRSS")
        self.peak_kb = self.start_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kb = max(self.peak_kb, _status_kb("VmRSS"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("VmHWM"), _status_kb("VmRSS"))
        return self.peak_kb


async def _worker(url: str, source: Path, digest: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from storage import open_storage

    store = open_storage(url)
    key = store.output_key("bench", "tsk_bench", source.name)
    dest = Path(tempfile.mkdtemp(dir="/tmp", prefix="storage-bench-")) / "download.bin"
    size = source.stat().st_size
    await store.put_bytes(store.output_key("bench", "warmup", "x"), b"warm up pools and imports")
    try:
        rss = PeakRss()
        t0 = time.perf_counter()
        obj = await store.put_file(key, source)
        t1 = time.perf_counter()
        got = await store.download_to(key, dest)
        t2 = time.perf_counter()
        peak = rss.stop()
        ok = obj.size == got == size and _sha256(dest) == digest
        await store.delete(key)
        return {
            "provider": store.provider,
            "upload_mb_s": size / MiB / (t1 - t0),
            "download_mb_s": size / MiB / (t2 - t1),
            "upload_s": t1 - t0,
            "download_s": t2 - t1,
            "rss_before_mb": rss.start_kb / 1024,
            "rss_peak_mb": peak / 1024,
            "rss_growth_mb": (peak - rss.start_kb) / 1024,
            "intact": ok,
        }
    finally:
        dest.unlink(missing_ok=True)
        dest.parent.rmdir()
        await store.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--backends", default="local,s3,gcs")
    parser.add_argument("--gcs-part-mb", type=int, default=0, help="resumable chunk size (default: the backend's)")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "FILE", "SHA256"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        url, file, digest = args.worker
        print(json.dumps(asyncio.run(_worker(url, Path(file), digest))))
        return

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_GCE_CHECK": "true",
    }
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    work = Path(tempfile.mkdtemp(dir="/tmp", prefix="storage-bench-"))
    source = work / "bench.mp4"
    servers: list[subprocess.Popen] = []  # type: ignore[type-arg]
    logs = {name: open(work / f"{name}-server.log", "wb") for name in ("s3", "gcs")}  # noqa: SIM115
    try:
        print(f"writing a {args.size_mb} MB test file to {source} ...", flush=True)
        digest = _write_test_file(source, args.size_mb * MiB)
        urls = {}
        backends = args.backends.split(",")
        if "local" in backends:
            urls["local"] = f"file://{work}/local-store"
        if "s3" in backends:
            port = _free_port()
            proc = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                stdout=logs["s3"], stderr=subprocess.STDOUT, env=env, cwd=work,
            )
            servers.append(proc)
            _wait_http(f"http://127.0.0.1:{port}/moto-api/", proc)
            import boto3

            boto3.client(
                "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                aws_access_key_id="bench", aws_secret_access_key="bench",
            ).create_bucket(Bucket="bench")
            urls["s3"] = f"s3://bench/out?endpoint_url=http://127.0.0.1:{port}"
        if "gcs" in backends:
            port = _free_port()
            proc = subprocess.Popen(
                [str(BIN / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(port),
                 "--in-memory", "--default-bucket", "bench"],
                stdout=logs["gcs"], stderr=subprocess.STDOUT, env=env, cwd=work,
            )
            servers.append(proc)
            _wait_http(f"http://127.0.0.1:{port}/", proc)
            urls["gcs"] = f"gs://bench/out?endpoint_url=http://127.0.0.1:{port}"
            if args.gcs_part_mb:
                urls["gcs"] += f"&part_size_mb={args.gcs_part_mb}"

        print(f"{'backend':8} {'upload MB/s':>12} {'download MB/s':>14} {'RSS before':>11} {'RSS peak':>9} {'growth':>8}  intact")
        for name, url in urls.items():
            out = subprocess.run(
                [sys.executable, __file__, "--worker", url, str(source), digest],
                capture_output=True, text=True, env=env, cwd=ROOT,
            )
            if out.returncode != 0:
                server_log = (work / f"{name}-server.log").read_text(errors="replace") if name in logs else ""
                errors = [line for line in server_log.splitlines() if " 200 " not in line and " 206 " not in line]
                print(f"{name:8} FAILED\n{out.stderr[-3000:]}\nserver log:\n" + "\n".join(errors[-40:]), flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{r['provider']:8} {r['upload_mb_s']:12.1f} {r['download_mb_s']:14.1f} "
                f"{r['rss_before_mb']:9.0f}MB {r['rss_peak_mb']:7.0f}MB {r['rss_growth_mb']:6.0f}MB  {r['intact']}",
                flush=True,
            )
    finally:
        for fh in logs.values():
            fh.close()
        for proc in servers:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for path in sorted(work.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        work.rmdir()


if __name__ == "__main__":
    main()
