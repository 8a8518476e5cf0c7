"""Helpers for the TTS tests: an in-process server, a response reader, WAV and SRT checks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import wave
from pathlib import Path
from typing import AsyncIterator

import httpx
import numpy as np

from model_servers.tts.app import create_app
from model_servers.tts.settings import TtsSettings
from model_servers.tts.wire import TtsResult, read_tts_response


@contextlib.asynccontextmanager
async def serve(settings: TtsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with its lifespan (engine loading) behind an in-process client, once loaded."""
    app = create_app(settings)
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
