"""Piper engine: neural VITS voices run by ONNX Runtime (CUDA when available), via the piper-tts package.

A voice is ``NAME.onnx`` + ``NAME.onnx.json`` in the voices directory. A multi-speaker voice's
speakers are addressed as ``NAME:SPEAKER``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskfleet.errors import EngineUnavailable

from model_servers.tts.engine import UnknownVoice, VoiceInfo, language_matches
from model_servers.tts.settings import TtsSettings

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    info: VoiceInfo
    voice: object  # piper.PiperVoice
    speaker_ids: dict[str, int]


class PiperEngine:
    name = "piper"

    def __init__(self, settings: TtsSettings) -> None:
        self._settings = settings
        self.device = "cpu"
        self._voices: dict[str, _Loaded] = {}

    def load(self) -> None:
        import onnxruntime
        from piper import PiperVoice

        voices_dir = Path(self._settings.voices_dir)
        if not voices_dir.is_dir():
            raise EngineUnavailable(f"voices directory {voices_dir} does not exist")
        models = sorted(voices_dir.glob("*.onnx"))
        pairs = [(m, m.with_name(m.name + ".json")) for m in models]
        orphans = [m.name for m, cfg in pairs if not cfg.is_file()]
        if orphans:
            log.warning("piper voices without their .onnx.json, skipped: %s", ", ".join(orphans))
        pairs = [(m, cfg) for m, cfg in pairs if cfg.is_file()]
        if not pairs:
            hint = f" ({', '.join(orphans)} lack their .onnx.json)" if orphans else ""
            raise EngineUnavailable(
                f"no piper voices (NAME.onnx + NAME.onnx.json) in {voices_dir}{hint}; "
                "fetch one with `taskfleet models download` or set TASKFLEET_TTS_ENGINE=espeak"
            )

        wanted = [p.strip() for p in self._settings.providers.split(",") if p.strip()]
        use_cuda = "CUDAExecutionProvider" in wanted and (
            "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        )
        self.device = "cuda" if use_cuda else "cpu"
        for model, cfg_path in pairs:
            name = model.name[: -len(".onnx")]
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
                voice = PiperVoice.load(model, cfg_path, use_cuda=use_cuda, download_dir=voices_dir)
            except Exception as exc:  # a broken voice file must not take the others down
                log.error("piper voice %s failed to load: %s", name, exc)
                continue
            language = (cfg.get("language") or {}).get("code") or cfg.get("espeak", {}).get("voice", "")
            speaker_ids = dict(cfg.get("speaker_id_map") or {})
            info = VoiceInfo(
                name, language, int(cfg["audio"]["sample_rate"]), self.name, speakers=sorted(speaker_ids)
            )
            self._voices[name] = _Loaded(info, voice, speaker_ids)
        if not self._voices:
            raise EngineUnavailable(f"no piper voice in {voices_dir} could be loaded (see the server log)")
        default = self._settings.tts_default_voice
        if default and default.split(":")[0] not in self._voices:
            raise EngineUnavailable(f"default voice {default!r} is not among the voices in {voices_dir}")

    def voices(self) -> list[VoiceInfo]:
        return [v.info for _, v in sorted(self._voices.items())]

    def resolve_voice(self, voice: str | None, language: str | None) -> VoiceInfo:
        if voice:
            base, _, speaker = voice.partition(":")
            loaded = self._voices.get(base)
            if loaded is None:
                raise UnknownVoice(f"no piper voice {base!r}; see GET /voices")
            if speaker and speaker not in loaded.speaker_ids:
                raise UnknownVoice(f"piper voice {base!r} has no speaker {speaker!r}")
            info = loaded.info
            return VoiceInfo(voice, info.language, info.sample_rate, self.name, speakers=info.speakers)
        if language:
            for name, loaded in sorted(self._voices.items()):
                if language_matches(language, loaded.info.language):
                    return loaded.info
            raise UnknownVoice(f"no piper voice for language {language!r}; see GET /voices")
        default = self._settings.tts_default_voice or min(self._voices)
        return self.resolve_voice(default, None)

    def synthesize(self, text: str, voice: VoiceInfo, speed: float) -> np.ndarray:
        from piper import SynthesisConfig

        base, _, speaker = voice.name.partition(":")
        loaded = self._voices[base]
        piper_voice = loaded.voice
        syn = SynthesisConfig(
            speaker_id=loaded.speaker_ids[speaker] if speaker else None,
            # Piper's length scale is duration per phoneme: speed 2 halves it.
            length_scale=piper_voice.config.length_scale / speed,
            normalize_audio=False,  # loudness is normalized per sentence for every engine alike
        )
        chunks = [c.audio_float_array for c in piper_voice.synthesize(text, syn_config=syn)]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.clip(np.concatenate(chunks), -1.0, 1.0).astype(np.float32)
