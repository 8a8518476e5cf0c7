"""The ``video_segments`` processor: speech timings → segments, stock placement, image requests.

Pure computation (no model server, no files): ``plan`` does it all and is what the tests call.
Segments tile the speech from 0 to its end with no gap, so the composed video is exactly as long
as the speech; a sentence longer than ``max_segment_s`` is cut into equal parts, one image each.
"""

from __future__ import annotations

import math
import random
from typing import Any

from consumer.context import TaskContext
from taskfleet.workflows.image_gen import MAX_SEED
from taskfleet.workflows.tts import SentenceTiming
from taskfleet.workflows.video import ComposeSettings, Segment, SegmentsInput, SegmentsOutput, VideoOptions, parse_size

# Flux takes sides from 64 to 2048 in steps of 16; compose scales and crops to the video's size.
IMAGE_MIN, IMAGE_MAX, IMAGE_STEP = 64, 2048, 16


async def process(ctx: TaskContext) -> dict[str, Any]:
    inp = SegmentsInput.model_validate(ctx.input)
    return plan(inp.sentences, inp.duration_s, inp.options).model_dump(mode="json")


def plan(sentences: list[SentenceTiming], duration_s: float, options: VideoOptions) -> SegmentsOutput:
    # No seed given: pick one and report it, so the producer can repeat the run.
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    spans = split_spans(sentences, duration_s, options.max_segment_s)
    stock = choose_stock(len(spans), options.stock_clips, options.stock_ratio, seed)
    width, height = parse_size(options.size)
    image_w, image_h = image_size(width, height)
    segments, images = [], []
    for index, (start, end, text) in enumerate(spans):
        clip = stock.get(index)
        segments.append(Segment(index=index, start_s=start, end_s=end, text=text,
                                source="stock" if clip else "generated", url=clip))  # fmt: skip
        if clip is None:
            images.append(image_request(text, index, seed, image_w, image_h, options))
    settings = ComposeSettings(
        width=width, height=height, fps=options.fps, motion=options.motion, subtitles=options.subtitles,
        logo_url=options.logo_url, logo_position=options.logo_position,
        music_url=options.music_url, music_volume=options.music_volume,
    )  # fmt: skip
    return SegmentsOutput(segments=segments, images=images, settings=settings, seed=seed)


def split_spans(sentences: list[SentenceTiming], duration_s: float, max_segment_s: float) -> list[tuple[float, float, str]]:
    """(start_s, end_s, text) tiling [0, duration_s]: each sentence runs until the next begins
    (the first from 0, the last to the end), then is cut into equal parts of at most max_segment_s."""
    said = [s for s in sentences if s.text.strip()]
    if not said:
        return [(0.0, round(duration_s, 3), "")]
    spans = []
    for i, sentence in enumerate(said):
        start = 0.0 if i == 0 else sentence.start_s
        end = duration_s if i == len(said) - 1 else said[i + 1].start_s
        if end <= start:  # timings that overlap or run backwards: keep the order, give no time
            continue
        parts = max(1, math.ceil((end - start) / max_segment_s - 1e-9))
        step = (end - start) / parts
        for p in range(parts):
            spans.append((round(start + p * step, 3), round(end if p == parts - 1 else start + (p + 1) * step, 3), sentence.text))
    return spans or [(0.0, round(duration_s, 3), " ".join(s.text for s in said))]


def choose_stock(count: int, clips: list[str], ratio: float, seed: int) -> dict[int, str]:
    """Segment index → stock clip URL for round(ratio × count) segments, the same for the same seed."""
    if not clips or ratio <= 0 or count == 0:
        return {}
    wanted = min(count, math.floor(ratio * count + 0.5))  # round half up: 0.5 of 3 segments is 2
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(count), wanted))
    return {index: clips[rng.randrange(len(clips))] for index in chosen}


def image_size(width: int, height: int) -> tuple[int, int]:
    """A Flux size with the video's aspect: scaled into [64, 2048], sides rounded up to 16."""
    factor = 1.0
    if min(width, height) < IMAGE_MIN:
        factor = IMAGE_MIN / min(width, height)
    if max(width, height) * factor > IMAGE_MAX:
        factor = IMAGE_MAX / max(width, height)

    def side(n: int) -> int:
        return max(IMAGE_MIN, min(IMAGE_MAX, math.ceil(n * factor / IMAGE_STEP) * IMAGE_STEP))

    return side(width), side(height)


def image_request(text: str, index: int, seed: int, width: int, height: int, options: VideoOptions) -> dict[str, Any]:
    # replace, not str.format: a script's own braces must not be read as placeholders.
    prompt = options.prompt_template.replace("{sentence}", text.strip() or "an empty scene")
    request: dict[str, Any] = {
        "prompt": prompt[:4000], "width": width, "height": height, "seed": (seed + index) % (MAX_SEED + 1),
        "output_format": "png",
    }  # fmt: skip
    image = options.image
    extra = {"num_inference_steps": image.steps, "guidance_scale": image.guidance_scale,
             "lora_name": image.lora, "lora_weight": image.lora_weight}  # fmt: skip
    request.update({k: v for k, v in extra.items() if v is not None})
    return request
