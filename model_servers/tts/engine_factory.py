"""The TTS engine chosen by settings (``TASKFLEET_TTS_ENGINE``).

Kept apart from ``engine.py``, which the engines import for their shared types: only this module
imports the engines, so no module imports one that imports it back.
"""

from __future__ import annotations

from model_servers.tts.engine import Engine
from model_servers.tts.settings import TtsSettings


def open_engine(settings: TtsSettings) -> Engine:
    # Imported here so an espeak server never imports onnxruntime and piper.
    if settings.tts_engine == "piper":
        from model_servers.tts.piper_engine import PiperEngine

        return PiperEngine(settings)
    from model_servers.tts.espeak_engine import EspeakEngine

    return EspeakEngine(settings)
