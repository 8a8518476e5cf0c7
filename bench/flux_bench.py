"""Images/s of the Flux server on the tiny offline model, with and without request batching.

Starts two real server processes (``python -m model_servers.flux``, one GPU slot each; batching
off = ``TASKFLEET_FLUX_MAX_BATCH=1``, on = up to 8 images per call), then keeps C requests in flight
for a fixed time and counts the images that came back. The two settings are measured alternately
and each point is the median of several rounds, so load from other processes on a shared machine
hits both alike.

    python bench/flux_bench.py [--seconds 3] [--rounds 3] [--sizes 64,256] [--steps 2] [--concurrency 1,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, max_batch: int, gpu_slots: int, cpu_threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TASKFLEET_FLUX_MODEL=str(model),
        TASKFLEET_FLUX_MAX_BATCH=str(max_batch),
        TASKFLEET_GPU_SLOTS=str(gpu_slots),
        TASKFLEET_FLUX_CPU_THREADS=str(cpu_threads),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_servers.flux", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").json()["status"] == "healthy":
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


async def load(url: str, concurrency: int, seconds: float, body: dict) -> tuple[float, float, float]:
    """Returns (images/s, mean latency s, mean images per pipeline call)."""
    images = 0
    latencies: list[float] = []
    batch_sizes: list[int] = []
    stop_at = 0.0

    async def worker(client: httpx.AsyncClient, i: int) -> None:
        nonlocal images
        n = 0
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            r = await client.post("/generate", json={**body, "seed": i * 100000 + n})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)
            out = r.json()
            images += len(out["images"])
            batch_sizes.append(out["batch_images"])
            n += 1

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        stop_at = time.perf_counter() + 0.5  # warm-up: first calls pay for allocations
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
        images, latencies, batch_sizes = 0, [], []
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return images / elapsed, sum(latencies) / len(latencies), sum(batch_sizes) / len(batch_sizes)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--max-batch", type=int, default=8, help="images per call when batching is on")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads per server (0 = torch default)")
    ap.add_argument("--model", help="an existing diffusers folder (default: build the tiny one)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            from model_servers.flux.tiny import build_tiny_flux

            model = build_tiny_flux(Path(tmp) / "model")
        print(f"model {model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
              f"{args.cpu_threads} torch thread(s), {args.steps} steps, median of {args.rounds} x {args.seconds:.0f} s per point")
        print(f"{'size':>5} {'batching':>9} {'conc':>5} {'images/s':>9} {'latency ms':>11} {'imgs/call':>10}")
        for size in (int(s) for s in args.sizes.split(",")):
            body = {"prompt": "a red cat on a lake", "width": size, "height": size,
                    "num_inference_steps": args.steps, "max_sequence_length": 64}
            modes = {"off": 1, f"<= {args.max_batch}": args.max_batch}
            servers = {label: start_server(model, max_batch=mb, gpu_slots=1, cpu_threads=args.cpu_threads) for label, mb in modes.items()}
            try:
                for c in (int(x) for x in args.concurrency.split(",")):
                    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in modes}
                    for _ in range(args.rounds):
                        for label, (_, url) in servers.items():
                            results[label].append(asyncio.run(load(url, c, args.seconds, body)))
                    for label, runs in results.items():
                        rate, lat, per_call = sorted(runs)[len(runs) // 2]
                        print(f"{size:>5} {label:>9} {c:>5} {rate:>9.1f} {lat * 1000:>11.1f} {per_call:>10.2f}", flush=True)
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.wait(30)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
