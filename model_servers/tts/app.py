"""Routes of the TTS model server: POST /tts, GET /voices, GET /health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from taskfleet.errors import EngineUnavailable, InvalidInput, TaskfleetError
from taskfleet.scratch import Scratch
from taskfleet.workflows.tts_wire import TtsMetadata, multipart_body

from model_servers.base import ModelState, install_common, is_out_of_memory, out_of_memory
from model_servers.tts.audio import find_ffmpeg
from model_servers.tts.engine import Engine
from model_servers.tts.engine_factory import open_engine
from model_servers.tts.schemas import CONTENT_TYPES, TtsRequest, VoiceModel, VoicesResponse
from model_servers.tts.settings import TtsSettings
from model_servers.tts.synthesis import synthesize_to_file

log = logging.getLogger(__name__)

_TTS_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TtsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {
                        **TtsRequest.model_json_schema()["properties"],
                        "reference_audio": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    },
    "responses": {
        "200": {
            "description": "multipart/form-data: a `metadata` JSON part then the `audio` file; "
            "with `Accept: audio/*`, the audio alone",
            "content": {"multipart/form-data": {}, "audio/wav": {}, "audio/mpeg": {}},
        }
    },
}


def create_app(settings: TtsSettings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or TtsSettings()
    engine = engine or open_engine(settings)
    models_directory = str(Path(settings.voices_dir).resolve()) if engine.name == "piper" else "espeak-ng-data"
    state = ModelState(models_directory, settings.gpu_slots)
    ffmpeg = find_ffmpeg(settings.ffmpeg_binary)

    async def load() -> None:
        try:
            await asyncio.to_thread(engine.load)
        except EngineUnavailable as exc:
            log.error("TTS engine %s unavailable: %s", engine.name, exc)
            state.failed(str(exc))
        except Exception as exc:  # surfaced on /health rather than as a crash loop
            log.exception("TTS engine %s failed to load", engine.name)
            state.failed(f"{engine.name} failed to load: {exc}")
        else:
            state.ready(engine.device, f"{engine.name}: {len(engine.voices())} voices")

    scratch = Scratch(None, "tts")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scratch.open()  # also removes job folders left by a TTS server that was killed
        loading = asyncio.create_task(load())
        yield
        loading.cancel()
        scratch.close()

    app = FastAPI(title="taskfleet TTS server", lifespan=lifespan)
    app.state.tts = state
    install_common(app, state)

    @app.get("/voices", response_model=VoicesResponse)
    async def voices() -> VoicesResponse:
        state.require_ready()
        default = engine.resolve_voice(None, None).name
        return VoicesResponse(
            engine=engine.name,
            default_voice=default,
            voices=[VoiceModel(**v.__dict__) for v in engine.voices()],
        )

    @app.post("/tts", openapi_extra=_TTS_OPENAPI)
    async def tts(request: Request):
        state.require_ready()
        req, reference = await _parse_request(request)
        if not req.text.strip():
            raise InvalidInput("text is blank", code="empty_text")
        if len(req.text) > settings.tts_max_chars:
            raise InvalidInput(
                f"text has {len(req.text)} characters; this server takes at most {settings.tts_max_chars}",
                code="text_too_long",
            )
        if reference is not None:
            # Neither piper nor espeak-ng clones voices; an engine that does would take the file here.
            await reference.close()
            raise InvalidInput(
                f"the {engine.name} engine cannot clone a voice from reference audio; "
                "leave reference_audio out or choose a voice from GET /voices",
                code="voice_cloning_unsupported",
            )
        voice = engine.resolve_voice(req.voice, req.language)
        workdir = scratch.mkdtemp("job-")
        try:
            async with state.slots.slot():
                result = await asyncio.to_thread(
                    synthesize_to_file,
                    engine,
                    settings,
                    text=req.text,
                    voice=voice,
                    speed=req.speed,
                    fmt=req.format,
                    workdir=workdir,
                    ffmpeg=ffmpeg,
                )
        except TaskfleetError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            if is_out_of_memory(exc):  # piper's ONNX Runtime session, or the samples themselves
                log.warning("synthesis ran out of memory: %s", exc)
                raise out_of_memory(exc, "synthesis") from exc
            log.exception("synthesis failed")
            raise TaskfleetError(f"synthesis failed: {exc}", code="synthesis_failed") from exc

        cleanup = BackgroundTask(shutil.rmtree, workdir, ignore_errors=True)
        content_type = CONTENT_TYPES[result.format]
        if "audio/" in request.headers.get("accept", ""):
            return FileResponse(
                result.audio_path,
                media_type=content_type,
                filename=result.audio_path.name,
                headers={
                    "X-Duration-S": str(result.duration_s),
                    "X-Sample-Rate": str(result.sample_rate),
                    "X-Voice": result.voice.name,
                },
                background=cleanup,
            )
        metadata = TtsMetadata(
            engine=engine.name,
            voice=result.voice.name,
            language=result.voice.language,
            format=result.format,
            content_type=content_type,
            sample_rate=result.sample_rate,
            duration_s=result.duration_s,
            size_bytes=result.audio_path.stat().st_size,
            sentences=result.sentences,
            srt=result.srt,
        )
        body = multipart_body(metadata, result.audio_path)
        return StreamingResponse(
            body.chunks,
            media_type=body.content_type,
            headers={"Content-Length": str(body.content_length)},
            background=cleanup,
        )

    return app


async def _parse_request(request: Request) -> tuple[TtsRequest, UploadFile | None]:
    content_type = request.headers.get("content-type", "")
    reference: UploadFile | None = None
    try:
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await request.form()
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if key == "reference_audio" and isinstance(value, UploadFile):
                    reference = value
                elif isinstance(value, str):
                    fields[key] = value
                else:
                    raise InvalidInput(f"unexpected file field {key!r}", code="validation_error")
            return TtsRequest.model_validate(fields), reference
        body = await request.body()
        try:
            data = json.loads(body)
        except ValueError:
            raise InvalidInput("body is neither JSON nor a form", code="validation_error") from None
        return TtsRequest.model_validate(data), None
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
