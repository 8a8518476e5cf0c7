"""``taskfleet up``: the whole local stack on one machine, supervised.

The task API on SQLite, CPU model servers (face swap with the offline ``lite`` engine, TTS
with espeak-ng, Flux when ``TASKFLEET_FLUX_MODEL`` names a model folder), consumers, and
local storage served by the API. With ``--demo`` it then pushes real work through: an echo
task, a face swap of two real photos, speech with subtitles and a short text_to_video (on a
tiny random Flux model when no real one is named), and prints where the results are.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taskfleet.settings_check import exit_on_bad_settings, settings_class


@dataclass
class Service:
    name: str
    kind: str  # its key in taskfleet.settings_check.KINDS
    module: str
    port: int | None
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def plan(args: argparse.Namespace) -> list[Service]:
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{args.port}"
    common = {
        "TASKFLEET_STORAGE_URL": os.environ.get("TASKFLEET_STORAGE_URL", f"file://{data / 'storage'}"),
        "TASKFLEET_API_URL": api_url,
        "TASKFLEET_PUBLIC_URL": api_url,
        # A terminal reads this stack's logs, not a collector: text unless the operator asks.
        "TASKFLEET_LOG_FORMAT": os.environ.get("TASKFLEET_LOG_FORMAT", "text"),
    }
    services = [
        Service(
            "api",
            "api",
            "task_api",
            args.port,
            {**common, "TASKFLEET_DATABASE_URL": os.environ.get("TASKFLEET_DATABASE_URL", f"sqlite:///{data / 'taskfleet.db'}")},
            ["--host", "127.0.0.1", "--port", str(args.port)],
        )
    ]
    workflows = ["echo"]
    servers: dict[str, str] = {}
    if _has("cv2", "onnxruntime", "numpy"):
        servers["face_swap"] = "TASKFLEET_FACE_SWAP_URLS"
        services.append(Service(
            "face_swap", "face_swap", "model_servers.face_swap", args.port + 101,
            {**common, "TASKFLEET_FACE_SWAP_ENGINE": os.environ.get("TASKFLEET_FACE_SWAP_ENGINE", "lite"),
             "TASKFLEET_MODELS_DIR": os.environ.get("TASKFLEET_MODELS_DIR", str(data / "models"))},
            ["--host", "127.0.0.1", "--port", str(args.port + 101)],
        ))
        workflows.append("face_swap")
    flux_model = os.environ.get("TASKFLEET_FLUX_MODEL", "")
    if not flux_model and args.demo and _has("torch", "diffusers"):
        # No real model named: the demo's text_to_video runs on the tiny random model the tests
        # build (offline, seconds); its images are noise, and the demo says so.
        flux_model = str(tiny_flux_model(data / "models" / "tiny-flux"))
        args.tiny_flux = True
    if flux_model and _has("torch", "diffusers"):
        servers["flux"] = "TASKFLEET_FLUX_URLS"
        services.append(Service(
            "flux", "flux", "model_servers.flux", args.port + 102, {**common, "TASKFLEET_FLUX_MODEL": flux_model},
            ["--host", "127.0.0.1", "--port", str(args.port + 102)],
        ))
        workflows.append("image_gen")
    if shutil.which("espeak-ng") or os.environ.get("TASKFLEET_TTS_ENGINE") == "piper":
        servers["tts"] = "TASKFLEET_TTS_URLS"
        services.append(Service(
            "tts", "tts", "model_servers.tts", args.port + 103,
            {**common, "TASKFLEET_TTS_ENGINE": os.environ.get("TASKFLEET_TTS_ENGINE", "espeak")},
            ["--host", "127.0.0.1", "--port", str(args.port + 103)],
        ))
        workflows.append("tts")
    if {"tts", "image_gen"} <= set(workflows) and shutil.which("ffmpeg"):
        workflows += ["video_segments", "video_compose"]  # the text_to_video pipeline's own steps
    consumer_env = dict(common)
    for svc in services:
        if svc.name in servers:
            consumer_env[servers[svc.name]] = svc.url
    consumer_env["TASKFLEET_WORKFLOWS"] = ",".join(workflows)
    consumer_env["TASKFLEET_CONCURRENCY"] = str(args.concurrency)
    for i in range(args.consumers):
        services.append(Service(f"consumer-{i + 1}", "consumer", "consumer", None, dict(consumer_env)))
    return services


def tiny_flux_model(folder: Path) -> Path:
    if not (folder / "model_index.json").exists():
        from model_servers.flux.tiny import build_tiny_flux

        build_tiny_flux(folder)
    return folder


def start(service: Service) -> None:
    env = {**os.environ, **service.env}
    service.process = subprocess.Popen([sys.executable, "-m", service.module, *service.args], env=env)


async def wait_healthy(services: list[Service], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        for svc in services:
            if svc.port is None:
                continue
            path = "/ready" if svc.name == "api" else "/health"
            while True:
                if svc.process.poll() is not None:
                    raise SystemExit(f"{svc.name} exited with {svc.process.returncode} while starting")
                try:
                    r = await http.get(svc.url + path)
                    if r.status_code == 200 and r.json().get("status") != "loading":
                        state = r.json().get("status", "ok")
                        print(f"  {svc.name:<10} {svc.url}  {state}" + (f" ({r.json().get('message')})" if state == "unhealthy" else ""))
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{svc.name} did not become ready in {timeout_s:.0f}s")
                await asyncio.sleep(0.2)


def stop(services: list[Service], grace_s: float = 20.0) -> None:
    for svc in reversed(services):  # consumers first: they release their tasks to the API
        if svc.process and svc.process.poll() is None:
            svc.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for svc in reversed(services):
        if svc.process is None:
            continue
        try:
            svc.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.process.kill()
            svc.process.wait()


async def demo(api_url: str, workflows: set[str], out_dir: Path, tiny_flux: bool = False) -> bool:
    from taskfleet.client import ProducerClient
    from taskfleet.states import TaskStatus

    ok = True
    async with ProducerClient(api_url, os.environ.get("TASKFLEET_PRODUCER_TOKEN")) as client:
        jobs: dict[str, dict] = {}
        jobs["echo"] = await client.submit("echo", {"data": {"hello": "taskfleet"}})
        if "face_swap" in workflows:
            source, target = demo_faces(out_dir)
            jobs["face_swap"] = await client.submit(
                "face_swap",
                {"source_url": await client.upload(str(source), "image/jpeg"),
                 "target_url": await client.upload(str(target), "image/png"),
                 "output_formats": ["jpg"]},
            )
        if "tts" in workflows:
            jobs["tts"] = await client.submit(
                "tts", {"text": "Taskfleet is running. This speech came from the local stack, "
                                "through the task API, a consumer and the text to speech server."})
        if {"tts", "image_gen", "video_segments", "video_compose"} <= workflows:
            jobs["text_to_video"] = await client.submit(
                "text_to_video", {"script": "Taskfleet turns a script into a video. Each sentence gets its own picture.",
                                  "size": "320x180", "fps": 12, "image": {"steps": 2}, "seed": 7})
        for name, task in jobs.items():
            done = await client.wait(task["task_id"], timeout=300)
            ok &= done["status"] == TaskStatus.COMPLETED
            print(f"\n== {name}: {done['status']} ({done['task_id']})")
            print(json.dumps(done["output"] if done["status"] == TaskStatus.COMPLETED else done["error"], indent=2))
            if name == "text_to_video" and done["status"] == TaskStatus.COMPLETED:
                model = "a tiny random Flux model (noise, for an offline demo)" if tiny_flux else "TASKFLEET_FLUX_MODEL"
                print(f"video: {done['output']['video_url']}\n  (images from {model})")
    return ok


def demo_faces(out_dir: Path) -> tuple[Path, Path]:
    """Two real, public-domain portraits shipped inside installed packages."""
    import cv2
    import matplotlib.cbook
    import numpy as np
    from skimage import data

    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "grace_hopper.jpg"
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        source.write_bytes(fh.read())
    target = out_dir / "astronaut.png"
    cv2.imwrite(str(target), cv2.cvtColor(np.asarray(data.astronaut()), cv2.COLOR_RGB2BGR))
    return source, target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taskfleet up", description="Run the whole local stack")
    parser.add_argument("--port", type=int, default=8000, help="task API port; model servers use +101..+103")
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("TASKFLEET_DATA_DIR", "./var"))
    parser.add_argument("--demo", action="store_true", help="push real demo work through once the stack is up")
    parser.add_argument("--exit-after-demo", action="store_true", help="stop the stack when the demo is done")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    args.tiny_flux = False  # plan() sets it when the demo builds its own tiny model

    services = plan(args)
    # Every process would refuse a bad setting on its own; checked here first, it is one line
    # and exit code 2 before anything starts, instead of a stack torn down half-way up.
    with exit_on_bad_settings("taskfleet up"):
        for kind in sorted({svc.kind for svc in services}):
            settings_class(kind)()
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print("starting the local stack:")
    for svc in services:
        start(svc)
    ok = True
    try:
        asyncio.run(wait_healthy(services, args.start_timeout))
        workflows = set(next(s for s in services if s.name.startswith("consumer")).env["TASKFLEET_WORKFLOWS"].split(","))
        print(f"\ntask API: http://127.0.0.1:{args.port}  (docs at /docs) · workflows: {', '.join(sorted(workflows))}")
        print(f"console:  http://127.0.0.1:{args.port}/ui")
        if args.demo:
            ok = asyncio.run(demo(f"http://127.0.0.1:{args.port}", workflows, Path(args.data_dir) / "demo", args.tiny_flux))
        if args.exit_after_demo:
            return
        print("\nstack is up; Ctrl-C stops it")
        while all(s.process.poll() is None for s in services):
            time.sleep(0.5)
        dead = [s.name for s in services if s.process.poll() is not None]
        print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        pass
    finally:
        stop(services)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
