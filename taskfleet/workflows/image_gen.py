"""The ``image_gen`` workflow: text to image on the Flux model server, images stored, URLs returned.

``ImageGenInput`` is also the body of the Flux server's ``POST /generate``, so the task API refuses
exactly what the server would refuse before a task is ever queued.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskfleet.workflows import Workflow

# The presets FLUX.1 was tuned around: about one megapixel, sides multiples of 16.
ASPECT_PRESETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1360, 768),
    "9:16": (768, 1360),
}
DEFAULT_SIZE = ASPECT_PRESETS["1:1"]
MAX_SEED = 2**32 - 1

OutputFormat = Literal["png", "jpg", "webp"]


class ImageGenInput(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "a lighthouse on a cliff at dawn, oil painting", "aspect_ratio": "16:9", "seed": 42}]},
    )

    prompt: str = Field(min_length=1, max_length=4000)
    # A preset sets the size; explicit width/height win over it. Sizes are rounded to what the VAE
    # needs (multiples of 16) by the server, which reports the rounding.
    aspect_ratio: Literal["1:1", "16:9", "9:16"] | None = None
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    # None = the model's own default (FLUX.1-schnell: 4 steps, no guidance, 256 tokens;
    # FLUX.1-dev: 28 steps, guidance 3.5, 512 tokens).
    num_inference_steps: int | None = Field(None, ge=1, le=100)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    max_sequence_length: int | None = Field(None, ge=16, le=512)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 = random; image i uses seed + i")
    num_images: int = Field(1, ge=1, le=4)
    output_format: OutputFormat = "png"
    output_quality: int = Field(90, ge=1, le=100, description="jpg/webp quality")
    lora_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    lora_weight: float = Field(1.0, ge=0.0, le=1.0)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is blank")
        return v

    @field_validator("output_format", mode="before")
    @classmethod
    def _format_alias(cls, v):
        if isinstance(v, str):
            v = v.strip().lower()
            return "jpg" if v == "jpeg" else v
        return v

    def requested_size(self) -> tuple[int, int]:
        preset = ASPECT_PRESETS[self.aspect_ratio] if self.aspect_ratio else DEFAULT_SIZE
        return (self.width or preset[0], self.height or preset[1])


class GeneratedImage(BaseModel):
    url: str
    storage_url: str | None = None
    seed: int
    width: int
    height: int
    content_type: str


class ImageGenOutput(BaseModel):
    images: list[GeneratedImage]
    seed: int  # the first image's seed, for callers that asked for one image
    width: int
    height: int
    requested_width: int
    requested_height: int
    size_rounded: bool
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    lora_name: str | None = None
    lora_weight: float | None = None
    model_variant: str
    storage_provider: str | None = None
    processing_time: float


IMAGE_GEN = Workflow(
    name="image_gen",
    input_model=ImageGenInput,
    output_model=ImageGenOutput,
    route="image",
    model_server="flux",
    timeout_s=900.0,
)
