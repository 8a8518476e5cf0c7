"""Routes of the Flux server: ``POST /generate``, ``GET /loras``, and the shared ``GET /health``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from typing import AsyncIterator

from fastapi import FastAPI

from model_servers.base import ModelState, install_common
from model_servers.flux.batcher import Batcher, CallParams
from model_servers.flux.engine import FluxEngine, find_lora_file, list_loras, round_size
from model_servers.flux.imaging import CONTENT_TYPES, encode_image
from model_servers.flux.schemas import GenerateRequest, GenerateResponse, ImageData, LoraList
from model_servers.flux.settings import FluxSettings
from taskfleet.workflows.image_gen import MAX_SEED

log = logging.getLogger("model_servers.flux")


def create_app(settings: FluxSettings | None = None) -> FastAPI:
    settings = settings or FluxSettings()
    engine = FluxEngine(settings)
    # Advertised capacity counts requests, not pipeline calls: with batching each of the
    # gpu_slots calls can carry up to flux_max_batch images, so the fleet should send that many.
    state = ModelState(str(engine.model_dir), capacity=settings.gpu_slots * settings.flux_max_batch)
    batcher: Batcher | None = None

    async def load() -> None:
        nonlocal batcher
        try:
            message = await asyncio.to_thread(engine.load)
        except Exception as exc:  # missing folder, broken weights, no torch: report, keep serving /health
            log.error("Flux model not loaded: %s", exc)
            state.failed(f"{type(exc).__name__}: {exc}" if not isinstance(exc, FileNotFoundError) else str(exc))
            return
        batcher = Batcher(engine, gpu_slots=settings.gpu_slots, max_batch=settings.flux_max_batch)
        batcher.start()
        state.ready(engine.device, message)
        log.info("ready: %s", message)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            if batcher is not None:
                await batcher.stop()

    app = FastAPI(title="taskfleet Flux server", lifespan=lifespan)
    install_common(app, state)

    @app.get("/loras", response_model=LoraList)
    async def loras() -> LoraList:
        return LoraList(loras=await asyncio.to_thread(list_loras, engine.lora_dir))

    @app.post("/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest) -> GenerateResponse:
        state.require_ready()
        assert batcher is not None
        if req.lora_name:
            # Unknown names fail here, before the request waits for the device.
            await asyncio.to_thread(find_lora_file, engine.lora_dir, req.lora_name)
        requested = req.requested_size()
        width, height = round_size(*requested)
        d = engine.defaults
        params = CallParams(
            width=width,
            height=height,
            num_inference_steps=req.num_inference_steps or d.num_inference_steps,
            guidance_scale=d.guidance_scale if req.guidance_scale is None else req.guidance_scale,
            max_sequence_length=req.max_sequence_length or d.max_sequence_length,
            lora_name=req.lora_name,
            lora_weight=req.lora_weight,
        )
        base_seed = secrets.randbelow(MAX_SEED + 1) if req.seed == -1 else req.seed
        seeds = [(base_seed + i) % (MAX_SEED + 1) for i in range(req.num_images)]

        started = time.perf_counter()
        async with state.slots.slot():
            result = await batcher.submit(params, req.prompt, seeds)
        inference_s = time.perf_counter() - started

        fmt = req.output_format

        def encode_all() -> list[bytes]:
            return [encode_image(img, fmt, req.output_quality) for img in result.images]

        encoded = await asyncio.to_thread(encode_all)
        return GenerateResponse(
            images=[
                ImageData(
                    index=i,
                    seed=seed,
                    width=img.width,
                    height=img.height,
                    format=fmt,
                    content_type=CONTENT_TYPES[fmt],
                    data=base64.b64encode(data).decode("ascii"),
                )
                for i, (seed, img, data) in enumerate(zip(seeds, result.images, encoded))
            ],
            width=width,
            height=height,
            requested_width=requested[0],
            requested_height=requested[1],
            size_rounded=(width, height) != requested,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            max_sequence_length=params.max_sequence_length,
            lora_name=req.lora_name,
            lora_weight=req.lora_weight if req.lora_name else None,
            model_variant=engine.variant,
            batch_images=result.batch_images,
            batch_requests=result.batch_requests,
            inference_time_s=round(inference_s, 4),
        )

    app.state.flux_state = state
    app.state.flux_engine = engine
    return app
