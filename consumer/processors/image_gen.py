"""The ``image_gen`` processor: ask a Flux server for images, store each one, return their URLs.

The Flux server answers JSON with each image base64-encoded (see model_servers/flux/schemas.py);
images are at most a few MB, so holding them in memory here is fine. No torch is imported here.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from consumer.context import TaskContext
from consumer.errors import ModelServerError
from taskfleet.workflows.image_gen import ImageGenOutput

# What the server decided (sizes after rounding, defaults it filled in) and the result passes on.
_ECHOED = (
    "width",
    "height",
    "requested_width",
    "requested_height",
    "size_rounded",
    "num_inference_steps",
    "guidance_scale",
    "max_sequence_length",
    "lora_name",
    "lora_weight",
    "model_variant",
)


async def process(ctx: TaskContext) -> dict[str, Any]:
    started = time.perf_counter()
    body = {k: v for k, v in ctx.input.items() if v is not None}
    await ctx.progress(5, "generating")
    response = await ctx.model_server.request("POST", "/generate", json=body)
    try:
        result = response.json()
        images = result["images"]
        decoded = [
            ({key: img[key] for key in ("seed", "width", "height", "content_type")}, base64.b64decode(img["data"], validate=True))
            for img in images
        ]
        meta = {key: result[key] for key in _ECHOED}
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        # A server that answers 200 with a broken body is misbehaving; another server or attempt may not.
        raise ModelServerError(f"malformed /generate response: {exc}", retryable=True) from None
    if len(decoded) != ctx.input.get("num_images", 1):
        raise ModelServerError(
            f"asked for {ctx.input.get('num_images', 1)} images, the server returned {len(decoded)}", retryable=True
        )

    await ctx.progress(80, "storing images")
    stored_images = []
    provider = getattr(ctx.storage, "provider", None)
    ext = ctx.input.get("output_format", "png")  # ours, not the server's: it names a file
    # Stored from memory: no work directory, no file written and then copied.
    files = [(data, f"image_{index}.{ext}", img["content_type"]) for index, (img, data) in enumerate(decoded)]
    for (img, _), stored in zip(decoded, await ctx.put_outputs(files)):
        stored_images.append(
            {
                "url": stored.url,
                "storage_url": stored.storage_url,
                "seed": img["seed"],
                "width": img["width"],
                "height": img["height"],
                "content_type": img["content_type"],
            }
        )
    await ctx.progress(100, "done")
    output = ImageGenOutput(
        images=stored_images,
        seed=stored_images[0]["seed"],
        storage_provider=provider,
        processing_time=round(time.perf_counter() - started, 3),
        **meta,
    )
    return output.model_dump(mode="json")
