"""The ``tts`` processor: synthesize on a TTS server, store the audio and its SRT, return their URLs.

The server's response is multipart (metadata JSON, then the audio); it is parsed as it streams.
A short clip is kept in memory and stored from there; a long narration goes straight to the task's
work directory, so it never sits in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumer.context import TaskContext
from taskfleet.workflows.tts import TtsInput, TtsOutput
from taskfleet.workflows.tts_wire import read_tts_response

SRT_CONTENT_TYPE = "application/x-subrip"
# A clip up to this size (about 90 s of 22 kHz wav) is held in memory and stored from there: no
# work directory, no file written and then copied. With 32 tasks at once that is 128 MB at most.
AUDIO_IN_MEMORY_MAX = 4 << 20


async def process(ctx: TaskContext) -> dict[str, Any]:
    inp = TtsInput.model_validate(ctx.input)
    fields = {
        "text": inp.text,
        "language": inp.language,
        "voice": inp.voice,
        "speed": inp.speed,
        "format": inp.format,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    name = f"speech.{inp.format}"

    def audio_path() -> Path:
        return ctx.workdir / name  # made only for a clip too long to hold in memory

    await ctx.progress(5, "synthesizing")
    if inp.reference_audio_url:
        # Sent as it is; the server decides whether its engine can clone a voice (piper and
        # espeak answer 422 voice_cloning_unsupported, which fails the task without a retry).
        reference = await ctx.fetch_input(inp.reference_audio_url, "reference_audio")
        with reference.open("rb") as ref:
            form = {k: str(v) for k, v in fields.items()}
            async with ctx.model_server.stream(
                "POST", "/tts", data=form, files={"reference_audio": (reference.name, ref)}, timeout=ctx.timeout_s
            ) as response:
                result = await read_tts_response(
                    response.headers.get("content-type", ""), response.aiter_bytes(), audio_path,
                    memory_limit=AUDIO_IN_MEMORY_MAX,
                )
    else:
        async with ctx.model_server.stream("POST", "/tts", json=fields, timeout=ctx.timeout_s) as response:
            result = await read_tts_response(
                response.headers.get("content-type", ""), response.aiter_bytes(), audio_path,
                memory_limit=AUDIO_IN_MEMORY_MAX,
            )

    meta = result.metadata
    await ctx.progress(80, "storing audio and subtitles")
    audio, srt = await ctx.put_outputs(
        [
            (result.audio if result.audio is not None else result.audio_path, name, meta.content_type),
            (meta.srt.encode("utf-8"), "speech.srt", SRT_CONTENT_TYPE),
        ]
    )
    await ctx.progress(100, "done")
    return TtsOutput(
        audio_url=audio.url,
        srt_url=srt.url,
        duration_s=meta.duration_s,
        sample_rate=meta.sample_rate,
        format=meta.format,
        engine=meta.engine,
        voice=meta.voice,
        language=meta.language,
        sentences=meta.sentences,
        storage_provider=getattr(ctx.storage, "provider", "local"),
    ).model_dump(mode="json")
