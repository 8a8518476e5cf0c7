"""The consumer's reader of the POST /tts wire format: where the audio goes, file or memory."""

from __future__ import annotations

from pathlib import Path

from taskfleet.workflows.tts_wire import TtsMetadata, multipart_body, read_tts_response

AUDIO = bytes(range(256)) * 40  # 10,240 bytes


def metadata(size_bytes: int) -> TtsMetadata:
    return TtsMetadata(
        engine="espeak", voice="en", language="en", format="wav", content_type="audio/wav", sample_rate=22050,
        duration_s=0.2, size_bytes=size_bytes, sentences=[], srt="",
    )


async def chunked(body, size: int = 1000):
    # Small pieces, so the parts straddle chunk boundaries as they do over a socket.
    async for chunk in body.chunks:
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]


async def read(tmp_path: Path, size_bytes: int, memory_limit: int):
    source = tmp_path / "served.wav"
    source.write_bytes(AUDIO)
    body = multipart_body(metadata(size_bytes), source)
    asked: list[Path] = []

    def audio_path() -> Path:
        asked.append(tmp_path / "out.wav")
        return asked[-1]

    result = await read_tts_response(body.content_type, chunked(body), audio_path, memory_limit=memory_limit)
    return result, asked


async def test_audio_within_the_limit_stays_in_memory_and_makes_no_file(tmp_path):
    result, asked = await read(tmp_path, len(AUDIO), memory_limit=len(AUDIO))
    assert result.audio == AUDIO and result.audio_path is None
    assert asked == [] and not (tmp_path / "out.wav").exists()
    assert result.metadata.size_bytes == len(AUDIO)


async def test_audio_over_the_limit_goes_to_the_file(tmp_path):
    result, asked = await read(tmp_path, len(AUDIO), memory_limit=len(AUDIO) - 1)
    assert result.audio is None and result.audio_path == tmp_path / "out.wav" and len(asked) == 1
    assert result.audio_path.read_bytes() == AUDIO


async def test_audio_longer_than_its_metadata_said_spills_to_the_file_whole(tmp_path):
    # A server that undercounts must not make the reader hold more than the limit.
    result, asked = await read(tmp_path, 100, memory_limit=4000)
    assert result.audio is None and len(asked) == 1
    assert result.audio_path.read_bytes() == AUDIO


async def test_with_no_memory_limit_even_empty_audio_goes_to_the_path(tmp_path):
    source = tmp_path / "served.wav"
    for audio in (AUDIO, b""):
        source.write_bytes(audio)
        body = multipart_body(metadata(len(audio)), source)
        result = await read_tts_response(body.content_type, chunked(body), tmp_path / "plain.wav")
        assert result.audio is None and result.audio_path.read_bytes() == audio
