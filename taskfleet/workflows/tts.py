"""The ``tts`` workflow: text to speech on a TTS model server; the audio and its SRT are stored.

The input and output models are shared by the task API (validation) and the consumer's processor;
the TTS server reuses ``SentenceTiming`` and the text limits so the three never disagree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskfleet.workflows import Workflow

# About 20 minutes of speech: long enough for a narrated video, short enough that one task
# finishes well inside the default timeout on a CPU server.
MAX_TEXT_CHARS = 20_000
MIN_SPEED, MAX_SPEED = 0.5, 2.0

AudioFormat = Literal["wav", "mp3"]


class TtsInput(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "Hello from taskfleet. This is the second sentence.", "language": "en", "format": "mp3"}]},
    )

    text: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS)
    language: str | None = Field(None, max_length=32, description="e.g. en, en-us, de; picks a voice when voice is absent")
    voice: str | None = Field(None, max_length=128, description="a name from the server's GET /voices")
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    format: AudioFormat = "wav"
    reference_audio_url: str | None = Field(
        None, description="voice to clone, for engines that clone voices; piper and espeak refuse it"
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is blank")
        return text


class SentenceTiming(BaseModel):
    index: int
    text: str
    start_s: float
    end_s: float


class TtsOutput(BaseModel):
    audio_url: str
    srt_url: str
    duration_s: float
    sample_rate: int
    format: AudioFormat
    engine: str
    voice: str
    language: str
    sentences: list[SentenceTiming]
    storage_provider: str


TTS = Workflow(
    name="tts",
    input_model=TtsInput,
    output_model=TtsOutput,
    route="tts",
    model_server="tts",
    timeout_s=900.0,
)
