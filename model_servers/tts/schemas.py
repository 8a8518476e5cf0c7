"""Pydantic models at the TTS server's HTTP boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from taskfleet.workflows.tts import MAX_SPEED, MIN_SPEED, AudioFormat


class TtsRequest(BaseModel):
    """POST /tts fields, as JSON or as form fields (multipart when a reference audio is sent).

    The text's length limit is the server's ``TASKFLEET_TTS_MAX_CHARS``, checked by the route.
    """

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1)
    language: str | None = Field(None, max_length=32)
    voice: str | None = Field(None, max_length=128)
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    format: AudioFormat = "wav"


class VoiceModel(BaseModel):
    name: str
    language: str
    sample_rate: int
    engine: str
    clones_voice: bool = False
    speakers: list[str] = []


class VoicesResponse(BaseModel):
    engine: str
    default_voice: str
    voices: list[VoiceModel]


CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}
