"""What the fleet costs: latency added to a sync /process call, and tasks/s through the fleet.

Starts a real task API (SQLite), consumer processes, a fake model server that answers at once
(tests/consumer/fake_model_server.py) and the real TTS server on espeak-ng, all on loopback, plus
the test plugin that provides the ``fake_model`` workflow (pip-installed into a temp dir, not the
shared venv). The sync latency is printed for both: the fake server shows the fleet's own cost on
a call that does nothing; TTS shows it on a real one, where the consumer also stores the wav and
the SRT (local storage) and the answer carries their URLs.

    python bench/consumer_bench.py [--calls 300] [--tts-calls 200] [--tasks 2000] [--consumers 2] [--concurrency 32]
        [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from taskfleet.client import ProducerClient

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FAKE = ROOT / "tests" / "consumer" / "fake_model_server.py"
PLUGIN = ROOT / "tests" / "consumer" / "plugin_pkg"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    e.update({k: str(v) for k, v in extra.items()})
    return e


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the model server's /health says its model is loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait_up(url, proc, timeout)
        if httpx.get(url, timeout=1).json().get("status") == "healthy":
            return
        time.sleep(0.1)
    raise TimeoutError(url)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Fleet:
    def __init__(self, tmp: Path, consumers: int, concurrency: int, capacity: int) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.roles: list[str] = []
        site = tmp / "site"
        subprocess.run(
            [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(self._copy_plugin())],
            check=True, capture_output=True,
        )
        pythonpath = f"{site}{os.pathsep}{ROOT}"
        storage = (tmp / "storage")
        storage.mkdir()
        logs = open(tmp / "procs.log", "ab")

        self.model_url = f"http://127.0.0.1:{free_port()}"
        port = self.model_url.rsplit(":", 1)[1]
        self._start([PY, str(FAKE), "--port", port, "--capacity", str(capacity)], env(PYTHONPATH=ROOT), logs)
        wait_up(self.model_url + "/health", self.procs[-1])
        self.tts_url = f"http://127.0.0.1:{free_port()}"
        self._start(
            [PY, "-m", "model_servers.tts", "--host", "127.0.0.1", "--port", self.tts_url.rsplit(":", 1)[1]],
            env(TASKFLEET_TTS_ENGINE="espeak", TASKFLEET_LOG_LEVEL="WARNING"), logs,
        )
        wait_ready(self.tts_url + "/health", self.procs[-1])

        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        self._start(
            [PY, "-m", "task_api", "--port", str(api_port), "--log-level", "warning"],
            env(PYTHONPATH=pythonpath, TASKFLEET_DATABASE_URL=f"sqlite:///{tmp}/tasks.db",
                TASKFLEET_STORAGE_URL=storage.as_uri()),
            logs,
        )
        wait_up(self.api_url + "/health", self.procs[-1])
        for i in range(consumers):
            mport = free_port()
            self._start(
                [PY, "-m", "consumer"],
                env(PYTHONPATH=pythonpath, TASKFLEET_API_URL=self.api_url, TASKFLEET_WORKFLOWS="fake_model,echo,tts",
                    TASKFLEET_MODEL_SERVER_URLS=json.dumps({"fake": [self.model_url]}), TASKFLEET_TTS_URLS=self.tts_url,
                    TASKFLEET_STORAGE_URL=storage.as_uri(), TASKFLEET_CONCURRENCY=concurrency,
                    TASKFLEET_METRICS_PORT=mport, TASKFLEET_LOG_LEVEL="WARNING", TASKFLEET_CONSUMER_ID=f"bench{i}"),
                logs,
            )
            wait_up(f"http://127.0.0.1:{mport}/metrics", self.procs[-1])

    def cpu_s(self) -> dict[str, float]:
        """user+sys CPU seconds so far of each process, by role (Linux /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for p, role in zip(self.procs, self.roles):
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError):
                pass
        return out

    def _copy_plugin(self) -> Path:
        dst = self.tmp / "plugin_src"
        shutil.copytree(PLUGIN, dst)
        return dst

    def _start(self, args, environment, logs) -> None:
        self.roles.append("consumer" if "consumer" in args else "api" if "task_api" in args
                          else "tts server" if "model_servers.tts" in args else "model server")
        self.procs.append(subprocess.Popen(args, env=environment, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


TTS_TEXT = "The fleet is up. Every sentence gets its own subtitle."


async def bench_latency(fleet: Fleet, calls: int, workflow: str = "fake_model") -> dict[str, float]:
    """Sequential calls, alternating: the model server directly, then the same through /process."""
    if workflow == "tts":
        direct_url, direct_body = fleet.tts_url + "/tts", {"text": TTS_TEXT}
        body = {"text": TTS_TEXT}  # the consumer stores the wav and the SRT; the answer has their URLs
    else:
        direct_url, direct_body = fleet.model_url + "/process", {"text": "hi"}
        body = {"text": "hi", "store": False}
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(20):  # warm up both paths
            await http.post(direct_url, json=direct_body)
            await http.post(f"{fleet.api_url}/api/{workflow}/process", json=body)
        direct, fleet_ms = [], []
        for _ in range(calls):
            t = time.perf_counter()
            r = await http.post(direct_url, json=direct_body)
            direct.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
            t = time.perf_counter()
            r = await http.post(f"{fleet.api_url}/api/{workflow}/process", json=body)
            fleet_ms.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
        listing = (await http.get(fleet.api_url + "/api/tasks", params={"workflow": workflow, "limit": 100})).json()
    items = [t for t in listing["items"] if t["status"] == "COMPLETED"]
    handoff = [(_ts(t["started_at"]) - _ts(t["created_at"])) * 1000 for t in items]
    working = [(_ts(t["finished_at"]) - _ts(t["started_at"])) * 1000 for t in items]
    return {
        "handoff_p50": statistics.median(handoff), "working_p50": statistics.median(working),
        "direct_p50": statistics.median(direct), "direct_p99": pct(direct, 99),
        "fleet_p50": statistics.median(fleet_ms), "fleet_p99": pct(fleet_ms, 99),
        "added_p50": statistics.median(fleet_ms) - statistics.median(direct),
    }


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def bench_throughput(fleet: Fleet, workflow: str, n: int, producers: int = 8, drain: bool = False) -> float:
    """Tasks/s from the first create to the last completion, by the API's own timestamps.

    ``drain``: the consumers are paused (SIGSTOP) while the tasks are created and resumed after,
    so the figure is the fleet's own rate on a full queue rather than the producers' rate.
    """
    consumers = [p for p, role in zip(fleet.procs, fleet.roles) if role == "consumer"]
    if drain:
        for p in consumers:
            p.send_signal(signal.SIGSTOP)
    body = {"text": "x", "store": False} if workflow == "fake_model" else {"data": "x"}
    async with httpx.AsyncClient(timeout=60) as http, ProducerClient(fleet.api_url, timeout=60) as producer:
        ids: list[str] = []

        async def produce(count: int) -> None:  # the project's own client, as a producer app would
            for _ in range(count):
                ids.append((await producer.submit(workflow, body))["task_id"])

        await asyncio.gather(*(produce(n // producers) for _ in range(producers)))
        resumed = time.time()
        if drain:
            for p in consumers:
                p.send_signal(signal.SIGCONT)
        # Wait with one cheap poll at a time (polling every task would load the API being measured).
        while (await http.get(f"{fleet.api_url}/api/tasks/{ids[-1]}")).json()["status"] != "COMPLETED":
            await asyncio.sleep(0.1)
        tasks = []
        for tid in ids:
            while (t := (await http.get(f"{fleet.api_url}/api/tasks/{tid}")).json())["status"] != "COMPLETED":
                if t["status"] in ("FAILED", "CANCELLED"):
                    raise RuntimeError(t)
                await asyncio.sleep(0.1)
            tasks.append(t)
    first = min(_ts(t["created_at"]) for t in tasks)
    last = max(_ts(t["finished_at"]) for t in tasks)
    if drain:
        return len(tasks) / (last - resumed)
    return len(tasks) / (last - first)


async def main_async(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="consumer-bench-"))
    fleet = Fleet(tmp, args.consumers, args.concurrency, capacity=max(64, args.concurrency * args.consumers))
    try:
        lat = await bench_latency(fleet, args.calls)
        print(f"sync /process latency over {args.calls} sequential calls (ms):")
        print(f"  direct to fake model server: p50 {lat['direct_p50']:.2f}  p99 {lat['direct_p99']:.2f}")
        print(f"  through the fleet:           p50 {lat['fleet_p50']:.2f}  p99 {lat['fleet_p99']:.2f}")
        print(f"  added by the fleet at p50:   {lat['added_p50']:.2f} ms (target <= 10)")
        print(f"  by the API's timestamps (1 ms resolution), p50: created -> leased {lat['handoff_p50']:.2f} ms, "
              f"leased -> completed (consumer + model call) {lat['working_p50']:.2f} ms")
        profilers = [
            subprocess.Popen([shutil.which("py-spy", path=str(Path(PY).parent)) or "py-spy", "record", "-p", str(p.pid), "-f", "raw", "-r", "500", "-o",
                              str(Path(args.py_spy) / f"tts-{role}.{p.pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p, role in zip(fleet.procs, fleet.roles) if role in ("api", "consumer")
        ] if args.py_spy else []
        tts = await bench_latency(fleet, args.tts_calls, "tts")
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            profiler.wait(30)
        print(f"sync /api/tts/process latency over {args.tts_calls} sequential calls, espeak-ng, "
              f"{len(TTS_TEXT)} characters (ms):")
        print(f"  direct to the TTS server (POST /tts):      p50 {tts['direct_p50']:.2f}  p99 {tts['direct_p99']:.2f}")
        print(f"  through the fleet (wav + srt stored):      p50 {tts['fleet_p50']:.2f}  p99 {tts['fleet_p99']:.2f}")
        print(f"  added by the fleet at p50:                 {tts['added_p50']:.2f} ms (target <= 6)")
        print(f"  by the API's timestamps, p50: created -> leased {tts['handoff_p50']:.2f} ms, "
              f"leased -> completed (consumer + TTS call + storing) {tts['working_p50']:.2f} ms")
        print(f"throughput, {args.consumers} consumer(s) x concurrency {args.concurrency}:")
        for wf in ("echo", "fake_model"):
            before = fleet.cpu_s()
            rate = await bench_throughput(fleet, wf, args.tasks)
            after = fleet.cpu_s()
            cpu = ", ".join(f"{role} {1000 * (after[role] - before[role]) / args.tasks:.2f}" for role in after)
            drained = await bench_throughput(fleet, wf, args.tasks, drain=True)
            print(f"  {wf}: {rate:.0f} tasks/s submit -> completed with producers running; "
                  f"{drained:.0f} tasks/s draining a full queue")
            print(f"    CPU ms per task: {cpu}")
    finally:
        fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--tts-calls", type=int, default=200)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--py-spy", metavar="DIR", help="record py-spy raw profiles of the API and consumers in the tts run")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
