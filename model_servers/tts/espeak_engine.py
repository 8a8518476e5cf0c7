"""espeak-ng engine: formant synthesis through the espeak-ng binary; needs no model files."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave

import numpy as np

from taskfleet.errors import EngineUnavailable, TaskfleetError

from model_servers.tts.engine import UnknownVoice, VoiceInfo, language_matches
from model_servers.tts.settings import TtsSettings

ESPEAK_SAMPLE_RATE = 22050
DEFAULT_WPM = 175  # espeak-ng's own default rate; speed 1.0 keeps it
DEFAULT_VOICE = "en-us"
_ALIAS = re.compile(r"\(([\w-]+) \d+\)")  # "(en 2)" in the Other Languages column


class EspeakEngine:
    name = "espeak"
    device = "cpu"

    def __init__(self, settings: TtsSettings) -> None:
        self._settings = settings
        self._binary = ""
        self._voices: dict[str, VoiceInfo] = {}
        # Languages espeak-ng also answers to ("en", "fr") without listing them as voices.
        self._aliases: set[str] = set()

    def load(self) -> None:
        binary = shutil.which(self._settings.espeak_binary)
        if binary is None:
            raise EngineUnavailable(
                f"espeak-ng binary {self._settings.espeak_binary!r} not found (apt-get install espeak-ng)"
            )
        self._binary = binary
        listing = subprocess.run([binary, "--voices"], capture_output=True, text=True, timeout=30)
        if listing.returncode != 0:
            raise EngineUnavailable(f"espeak-ng --voices failed: {listing.stderr.strip()[:200]}")
        for line in listing.stdout.splitlines()[1:]:
            # "Pty Language Age/Gender VoiceName File Other Languages": the language code is what -v takes.
            cols = line.split()
            if len(cols) >= 2:
                self._voices[cols[1]] = VoiceInfo(cols[1], cols[1], ESPEAK_SAMPLE_RATE, self.name)
                self._aliases.update(_ALIAS.findall(line))
        if not self._voices:
            raise EngineUnavailable("espeak-ng lists no voices (is espeak-ng-data installed?)")
        default = self._settings.tts_default_voice
        if default and not self._known(default.split("+")[0]):
            raise EngineUnavailable(f"default voice {default!r} is not an espeak-ng voice")

    def voices(self) -> list[VoiceInfo]:
        return sorted(self._voices.values(), key=lambda v: v.name)

    def resolve_voice(self, voice: str | None, language: str | None) -> VoiceInfo:
        if voice:
            # "en+f3" is voice en with espeak's f3 variant: accept variants of known voices.
            base = voice.split("+")[0]
            if not self._known(base):
                raise UnknownVoice(f"espeak-ng has no voice {voice!r}; see GET /voices")
            return VoiceInfo(voice, base, ESPEAK_SAMPLE_RATE, self.name)
        if language:
            exact = language.lower().replace("_", "-")
            if self._known(exact):
                return VoiceInfo(exact, exact, ESPEAK_SAMPLE_RATE, self.name)
            for name in sorted(self._voices):
                if language_matches(language, name):
                    return self._voices[name]
            raise UnknownVoice(f"espeak-ng has no voice for language {language!r}; see GET /voices")
        return self.resolve_voice(self._settings.tts_default_voice or DEFAULT_VOICE, None)

    def _known(self, name: str) -> bool:
        return name in self._voices or name in self._aliases

    def synthesize(self, text: str, voice: VoiceInfo, speed: float) -> np.ndarray:
        wpm = str(round(DEFAULT_WPM * speed))
        # espeak-ng writes a WAV header with the right length only with -w (not --stdout);
        # text goes on stdin so a sentence starting with "-" is never read as an option.
        with tempfile.NamedTemporaryFile(suffix=".wav") as out:
            run = subprocess.run(
                [self._binary, "-v", voice.name, "-s", wpm, "-b", "1", "-w", out.name, "--stdin"],
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=120,
            )
            if run.returncode != 0:
                raise TaskfleetError(
                    f"espeak-ng failed: {run.stderr.decode('utf-8', 'replace').strip()[:300]}",
                    code="synthesis_failed",
                )
            with wave.open(out.name, "rb") as wav:
                frames = wav.readframes(wav.getnframes())
        return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
