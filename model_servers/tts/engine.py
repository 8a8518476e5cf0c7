"""What a TTS engine offers the server (the engines implement it; ``engine_factory.py`` picks one).

An engine turns one sentence into float32 mono samples in [-1, 1]; splitting, pauses, loudness,
timings and encoding are shared (``synthesis.py``) so every engine gets them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from taskfleet.errors import InvalidInput


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    language: str
    sample_rate: int
    engine: str
    clones_voice: bool = False
    speakers: list[str] = field(default_factory=list)


class Engine(Protocol):
    name: str
    device: str

    def load(self) -> None:
        """Find and load voices; raises ``EngineUnavailable`` with the reason when it cannot."""

    def voices(self) -> list[VoiceInfo]: ...

    def resolve_voice(self, voice: str | None, language: str | None) -> VoiceInfo:
        """The voice a request gets; ``UnknownVoice`` when none matches."""

    def synthesize(self, text: str, voice: VoiceInfo, speed: float) -> np.ndarray: ...


class UnknownVoice(InvalidInput):
    code = "unknown_voice"


def language_matches(wanted: str, have: str) -> bool:
    """"en" matches "en_US" and "en-us"; "en-gb" matches "en_GB" but not "en_US"."""
    w = wanted.lower().replace("_", "-")
    h = have.lower().replace("_", "-")
    return h == w or h.startswith(w + "-")

