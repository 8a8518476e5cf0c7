"""Request and response bodies of the Flux server.

``POST /generate`` takes ``GenerateRequest`` (the ``image_gen`` workflow's input, unchanged) and
answers ``application/json`` ``GenerateResponse``: each image's bytes base64-encoded in ``data``
with its seed, content type and size. Generated images are small (a 1024x1024 PNG is 1-2 MB),
so one JSON body keeps the client a plain ``response.json()``; video-sized outputs are not made here.
"""

from __future__ import annotations

from pydantic import BaseModel

from taskfleet.workflows.image_gen import ImageGenInput


class GenerateRequest(ImageGenInput):
    pass


class ImageData(BaseModel):
    index: int
    seed: int
    width: int
    height: int
    format: str
    content_type: str
    data: str  # base64 of the encoded image


class GenerateResponse(BaseModel):
    images: list[ImageData]
    width: int
    height: int
    requested_width: int
    requested_height: int
    size_rounded: bool  # the requested size was not a multiple of 16 and was rounded to the nearest
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    lora_name: str | None
    lora_weight: float | None
    model_variant: str
    batch_images: int  # images in the pipeline call this request shared (1 = ran alone)
    batch_requests: int
    inference_time_s: float  # from queueing to decoded images, encoding excluded


class LoraList(BaseModel):
    loras: list[str]
