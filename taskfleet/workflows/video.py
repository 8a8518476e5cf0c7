"""The two consumer-side steps of the ``text_to_video`` pipeline, neither on a model server.

``video_segments`` turns the speech's sentence timings into segments (a long sentence spans
several images), picks which show a stock clip, and writes one image_gen request per generated
segment. ``video_compose`` renders the segments, speech, subtitles, logo and music into one video
with ffmpeg and stores it. The pipeline (taskfleet/pipelines/text_to_video.yaml) wires them to
the tts and image_gen workflows.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskfleet.workflows import Workflow
from taskfleet.workflows.tts import SentenceTiming

SIZE_PATTERN = r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$"
# Even sides (x264's yuv420p needs them) from a thumbnail up to 4K.
MIN_SIDE, MAX_SIDE = 32, 4096

Position = Literal["top-right", "top-left", "bottom-right", "bottom-left"]
Subtitles = Literal["burn", "soft", "none"]
Motion = Literal["kenburns", "none"]


def parse_size(size: str) -> tuple[int, int]:
    """``"1360x768"`` → (1360, 768); ValueError naming the rule that failed."""
    if not re.match(SIZE_PATTERN, size):
        raise ValueError(f"size {size!r} is not WxH (e.g. 1360x768)")
    width, height = (int(x) for x in size.split("x"))
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 2:
            raise ValueError(f"size {size!r}: each side must be even and from {MIN_SIDE} to {MAX_SIDE}")
    return width, height


class ImageOptions(BaseModel):
    """The ``image`` option of text_to_video: passed to every image_gen stage task."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, le=100)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    lora: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    lora_weight: float | None = Field(None, ge=0.0, le=1.0)


class VideoOptions(BaseModel):
    """The text_to_video input (CONTRACT §7), as the two workflows read it; defaults as there.

    Extra keys are ignored: the pipeline's JSON Schema already refused unknown ones at create.
    """

    model_config = ConfigDict(extra="ignore")

    script: str = ""
    prompt_template: str = Field("{sentence}", max_length=4000)
    negative_prompt: str | None = None
    size: str = "1360x768"
    image: ImageOptions = ImageOptions()
    max_segment_s: float = Field(6.0, gt=0.5, le=600)
    stock_clips: list[str] = Field(default_factory=list, max_length=1000)
    stock_ratio: float = Field(0.0, ge=0.0, le=1.0)
    logo_url: str | None = None
    logo_position: Position = "top-right"
    subtitles: Subtitles = "burn"
    fps: int = Field(25, ge=1, le=60)
    motion: Motion = "kenburns"
    music_url: str | None = None
    music_volume: float = Field(0.15, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @field_validator("size")
    @classmethod
    def _size(cls, size: str) -> str:
        parse_size(size)
        return size


class Segment(BaseModel):
    index: int
    start_s: float
    end_s: float
    text: str
    source: Literal["generated", "stock"]
    url: str | None = None  # the stock clip; for a generated one, filled by compose from image_gen


class SegmentsInput(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "sentences": [{"index": 0, "text": "Hello there.", "start_s": 0.0, "end_s": 1.2}],
        "duration_s": 1.4, "options": {"script": "Hello there.", "size": "1360x768", "seed": 7},
    }]})  # fmt: skip

    sentences: list[SentenceTiming]
    duration_s: float = Field(gt=0)
    options: VideoOptions


class ComposeSettings(BaseModel):
    """What compose needs of the options, normalized by the segments step."""

    model_config = ConfigDict(extra="forbid")

    width: int
    height: int
    fps: int
    motion: Motion = "kenburns"
    subtitles: Subtitles = "burn"
    logo_url: str | None = None
    logo_position: Position = "top-right"
    music_url: str | None = None
    music_volume: float = 0.15


class SegmentsOutput(BaseModel):
    segments: list[Segment]
    images: list[dict[str, Any]]  # one image_gen input per generated segment, in segment order
    settings: ComposeSettings
    seed: int


class ComposeInput(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "segments": [{"index": 0, "start_s": 0.0, "end_s": 1.4, "text": "Hello there.", "source": "stock",
                      "url": "https://example.com/clip.mp4"}],
        "audio_url": "https://example.com/speech.wav", "duration_s": 1.4,
        "settings": {"width": 1360, "height": 768, "fps": 25},
    }]})  # fmt: skip

    segments: list[Segment] = Field(min_length=1)
    images: list[dict[str, Any]] = Field(default_factory=list, description="image_gen outputs, one per generated segment")
    audio_url: str
    srt_url: str | None = None
    duration_s: float = Field(gt=0)
    settings: ComposeSettings


class ComposeOutput(BaseModel):
    video_url: str
    duration_s: float
    width: int
    height: int
    fps: int
    frames: int
    segments: list[Segment]


VIDEO_SEGMENTS = Workflow(
    name="video_segments", input_model=SegmentsInput, output_model=SegmentsOutput, timeout_s=60.0,
)  # fmt: skip
VIDEO_COMPOSE = Workflow(
    name="video_compose", input_model=ComposeInput, output_model=ComposeOutput, timeout_s=3600.0,
)  # fmt: skip
