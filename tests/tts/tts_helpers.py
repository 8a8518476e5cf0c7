"""Helpers for the TTS tests: an in-process server, a response reader, WAV and SRT checks, an engine double."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import AsyncIterator

import httpx
import numpy as np

from model_servers.tts.app import create_app
from model_servers.tts.espeak_engine import EspeakEngine
from model_servers.tts.settings import TtsSettings
from taskfleet.workflows.tts_wire import TtsResult, read_tts_response

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def serve(settings: TtsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with its lifespan (engine loading) behind an in-process client, once loaded."""
    async with serve_app(create_app(settings)) as client:
        yield client


@contextlib.asynccontextmanager
async def serve_app(app) -> AsyncIterator[httpx.AsyncClient]:
    """``serve`` for an app already made (with an engine of the test's)."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tts") as client:
            for _ in range(200):
                if (await client.get("/health")).json()["status"] != "loading":
                    break
                await asyncio.sleep(0.05)
            yield client


async def synthesize(client: httpx.AsyncClient, tmp_path: Path, **fields) -> TtsResult:
    response = await client.post("/tts", json=fields)
    assert response.status_code == 200, response.text

    async def body():
        # Small chunks, so parts straddle chunk boundaries as they do over a real socket.
        for i in range(0, len(response.content), 4096):
            yield response.content[i : i + 4096]

    fmt = fields.get("format", "wav")
    return await read_tts_response(response.headers["content-type"], body(), tmp_path / f"out-{id(response)}.{fmt}")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768
    return data, rate


def wav_bytes_duration(data: bytes) -> float:
    with wave.open(io.BytesIO(data), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def check_srt_tiles(srt: str, duration_s: float, sentences: list[str]) -> None:
    """Cues in order, not overlapping, covering the audio from 0 to its end, all text present."""
    from model_servers.tts.subtitles import parse_srt

    cues = parse_srt(srt)
    assert cues, "no cues"
    assert cues[0][0] == 0.0
    assert abs(cues[-1][1] - duration_s) <= 0.002
    for (s0, e0, _), (s1, e1, _) in zip(cues, cues[1:]):
        assert s0 < e0 <= s1 < e1
        assert s1 - e0 <= 0.001, "a gap between cues"
    said = " ".join(t.replace("\n", " ") for _, _, t in cues)
    assert said == " ".join(sentences)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """``python -m MODULE ARGS`` with extra env, in its own process group, ready once ``ready_url`` answers."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], ready_url: str, log_path: Path) -> None:
        self.module, self.args, self.env, self.ready_url, self.log_path = module, args, env, ready_url, log_path
        self.url = ready_url.rsplit("/", 1)[0]
        self.popen: subprocess.Popen | None = None

    def __enter__(self) -> "Process":
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
        env.update(self.env, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.popen.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.ready_url, timeout=1, trust_env=False).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise TimeoutError(f"{self.ready_url} did not answer:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def tts_server(log_dir: Path, **env: str) -> Process:
    port = free_port()
    return Process(
        "model_servers.tts", ["--host", "127.0.0.1", "--port", str(port)],
        {"TASKFLEET_TTS_ENGINE": "espeak", **env}, f"http://127.0.0.1:{port}/health", log_dir / f"tts-{port}.log",
    )


class OutOfMemoryEngine(EspeakEngine):
    """The real espeak-ng engine, except that each sentence asks numpy for an exabyte of samples.

    More than any address space, so numpy raises its real ``MemoryError`` at once, touching nothing.
    ``calls`` counts the sentences it was asked for.
    """

    def __init__(self, settings: TtsSettings) -> None:
        super().__init__(settings)
        self.calls = 0

    def synthesize(self, text: str, voice, speed: float) -> np.ndarray:
        self.calls += 1
        return np.zeros(1 << 60, np.float32)
