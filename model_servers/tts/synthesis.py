"""Text to an audio file: split by sentence, synthesize in order, level loudness, time, encode.

Each sentence is written to the WAV file as soon as it is synthesized, so memory stays at one
sentence's audio however long the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from taskfleet.errors import InvalidInput
from taskfleet.workflows.tts import SentenceTiming

from model_servers.tts.audio import WavWriter, encode_mp3, normalize_loudness, trim_silence
from model_servers.tts.engine import Engine, VoiceInfo
from model_servers.tts.sentences import split_sentences
from model_servers.tts.settings import TtsSettings
from model_servers.tts.subtitles import build_srt


@dataclass
class SynthesisResult:
    audio_path: Path
    format: str
    duration_s: float
    sample_rate: int
    voice: VoiceInfo
    sentences: list[SentenceTiming]
    srt: str


def synthesize_to_file(
    engine: Engine,
    settings: TtsSettings,
    *,
    text: str,
    voice: VoiceInfo,
    speed: float,
    fmt: str,
    workdir: Path,
    ffmpeg: str | None,
) -> SynthesisResult:
    sentences = split_sentences(text, settings.tts_max_sentence_chars)
    if not sentences:
        raise InvalidInput("text has nothing to say", code="empty_text")
    wav_path = workdir / "speech.wav"
    writer = WavWriter(wav_path, voice.sample_rate)
    timings: list[SentenceTiming] = []
    try:
        for text_part in sentences:
            samples = engine.synthesize(text_part, voice, speed)
            samples = trim_silence(samples, voice.sample_rate)
            if samples.size == 0:
                continue  # punctuation or symbols the voice does not pronounce: no cue either
            samples = normalize_loudness(samples, voice.sample_rate, settings.tts_target_dbfs)
            if timings:
                # The pause scales with speed too, so speed 2 halves the whole file, not just the words.
                writer.silence(settings.tts_sentence_gap_s / speed)
            start = writer.seconds
            writer.write(samples)
            timings.append(
                SentenceTiming(index=len(timings), text=text_part, start_s=round(start, 3), end_s=round(writer.seconds, 3))
            )
    finally:
        writer.close()
    if not timings:
        raise InvalidInput("the text produced no speech", code="no_speech")
    duration = writer.seconds
    srt = build_srt(timings, duration)
    audio_path = wav_path
    if fmt == "mp3":
        if ffmpeg is None:
            raise InvalidInput(
                "mp3 needs ffmpeg, which this server lacks; ask for wav", code="format_unavailable"
            )
        audio_path = workdir / "speech.mp3"
        encode_mp3(ffmpeg, wav_path, audio_path, settings.mp3_bitrate)
        wav_path.unlink()
    return SynthesisResult(audio_path, fmt, round(duration, 3), voice.sample_rate, voice, timings, srt)
