"""The ``face_swap`` workflow: put the face of a source image onto the faces of a target image or video.

The swap options are shared word for word by the API (task input), the consumer (what it forwards)
and the face-swap model server (what it accepts), so they live here, in a module with no heavy imports.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskfleet.workflows import Workflow

OutputFormat = Literal["jpg", "png", "webp", "gif", "mp4"]
IMAGE_FORMATS = ("jpg", "png", "webp")
SwapperModel = Literal["inswapper_128_fp16", "inswapper_128"]
VideoEncoder = Literal["libx264", "libx265", "h264_nvenc", "hevc_nvenc"]

_RESOLUTION = re.compile(r"^\s*(\d{2,5})\s*[xX]\s*(\d{2,5})\s*$")


class FaceSwapOptions(BaseModel):
    """How to swap; everything but the two input URLs. Sent as-is to the model server."""

    model_config = ConfigDict(extra="forbid")

    # "WxH": the output fits inside this box, aspect ratio kept; none keeps the target's size.
    resolution: str | None = None
    model: SwapperModel | None = None  # None = the server's configured swapper
    many_faces: bool = False
    face_enhancer: bool = False
    mouth_mask: bool = False
    keep_fps: bool = True
    keep_audio: bool = True
    # 0-100, higher is better; mapped to the encoder's CRF/CQ (FaceFusion's scale).
    video_quality: int = Field(80, ge=0, le=100)
    video_encoder: VideoEncoder = "libx264"
    output_formats: list[OutputFormat] | None = Field(None, max_length=5)

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        match = _RESOLUTION.match(value)
        if not match or not (16 <= int(match[1]) <= 8192 and 16 <= int(match[2]) <= 8192):
            raise ValueError("resolution must look like 1280x720 (16..8192 per side)")
        return f"{int(match[1])}x{int(match[2])}"

    def resolution_box(self) -> tuple[int, int] | None:
        if self.resolution is None:
            return None
        w, h = self.resolution.split("x")
        return int(w), int(h)


class FaceSwapInput(FaceSwapOptions):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"source_url": "https://example.com/face.jpg", "target_url": "https://example.com/clip.mp4",
                                         "keep_audio": True, "output_formats": ["mp4", "gif"]}]}  # fmt: skip
    )

    source_url: str = Field(..., min_length=1, max_length=4096)
    target_url: str = Field(..., min_length=1, max_length=4096)

    def options(self) -> FaceSwapOptions:
        return FaceSwapOptions.model_validate(self.model_dump(exclude={"source_url", "target_url"}))


class FaceSwapResponse(BaseModel):
    """The seed's result shape; ``metadata`` carries storage and media facts."""

    status: str = "success"
    output_path: str | None = None
    processing_time: float | None = None
    error: str | None = None
    job_id: str | None = None
    metadata: dict[str, Any] | None = None


FACE_SWAP = Workflow(
    name="face_swap",
    input_model=FaceSwapInput,
    output_model=FaceSwapResponse,
    route="face-swap",
    model_server="face_swap",
    timeout_s=3600.0,
)
