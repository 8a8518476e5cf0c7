"""Settings of the TTS model server (env prefix TASKFLEET_)."""

from __future__ import annotations

from typing import Literal

from model_servers.base import ModelServerSettings
from taskfleet.workflows.tts import MAX_TEXT_CHARS


class TtsSettings(ModelServerSettings):
    port: int = 8103
    # espeak needs no model files, so the offline stack works out of the box; piper sounds far better.
    tts_engine: Literal["piper", "espeak"] = "espeak"
    voices_dir: str = "./voices"  # piper: NAME.onnx + NAME.onnx.json pairs
    tts_default_voice: str = ""  # piper voice name or espeak voice; empty = first piper voice / "en"
    tts_max_chars: int = MAX_TEXT_CHARS
    # A sentence longer than this is split at clause breaks, then at spaces: engines degrade on
    # very long utterances and subtitles need reasonably short cues.
    tts_max_sentence_chars: int = 300
    tts_sentence_gap_s: float = 0.25  # pause between sentences at speed 1.0
    tts_target_dbfs: float = -20.0  # RMS loudness every sentence is brought to
    espeak_binary: str = "espeak-ng"
    ffmpeg_binary: str = ""  # empty: ffmpeg on PATH, else imageio-ffmpeg's bundled binary
    mp3_bitrate: str = "128k"
