"""The ``tts`` processor: synthesize on a TTS server, store the audio and its SRT, return their URLs.

The server's response is multipart (metadata JSON, then the audio); it is parsed as it streams,
the audio going straight to the task's work directory, so a long narration never sits in memory.
"""

from __future__ import annotations

from typing import Any

from consumer.context import TaskContext
from taskfleet.workflows.tts import TtsInput, TtsOutput
from taskfleet.workflows.tts_wire import read_tts_response

SRT_CONTENT_TYPE = "application/x-subrip"


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
    audio_path = ctx.workdir / f"speech.{inp.format}"
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
                result = await read_tts_response(response.headers.get("content-type", ""), response.aiter_bytes(), audio_path)
    else:
        async with ctx.model_server.stream("POST", "/tts", json=fields, timeout=ctx.timeout_s) as response:
            result = await read_tts_response(response.headers.get("content-type", ""), response.aiter_bytes(), audio_path)

    meta = result.metadata
    await ctx.progress(80, "storing audio and subtitles")
    srt_path = ctx.workdir / "speech.srt"
    srt_path.write_text(meta.srt, encoding="utf-8")
    audio, srt = await ctx.put_outputs(
        [(audio_path, audio_path.name, meta.content_type), (srt_path, srt_path.name, SRT_CONTENT_TYPE)]
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
