from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from model_servers.tts.settings import TtsSettings

from tts_helpers import serve


@pytest.fixture
def espeak_settings(tmp_path: Path) -> TtsSettings:
    return TtsSettings(tts_engine="espeak", voices_dir=str(tmp_path / "none"))


@pytest.fixture
async def espeak(espeak_settings: TtsSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(espeak_settings) as client:
        yield client


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    from tts_voices import write_tiny_voice

    d = tmp_path / "voices"
    write_tiny_voice(d, "en_US-tiny-low", "en_US")
    write_tiny_voice(d, "de_DE-tiny-low", "de_DE", "de")
    return d


@pytest.fixture
async def piper(voices_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(TtsSettings(tts_engine="piper", voices_dir=str(voices_dir))) as client:
        yield client
