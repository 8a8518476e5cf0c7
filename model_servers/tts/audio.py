"""Sample-level work shared by every engine: silence trimming, loudness, WAV writing, MP3 encoding.

Loudness is levelled per sentence (RMS of the voiced part to a target dBFS, peaks kept under
-1 dBFS) so the file can be written sentence by sentence without holding the whole text's audio
in memory. Hand-written in numpy: a BS.1770 meter (pyloudnorm) needs 400 ms blocks that short
sentences do not have, and K-weighting changes little on mono speech.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from taskfleet.errors import TaskfleetError

PEAK_CEILING = 10 ** (-1.0 / 20)  # -1 dBFS
_FRAME_S = 0.02


def trim_silence(samples: np.ndarray, sample_rate: int, threshold: float = 0.02, keep_s: float = 0.03) -> np.ndarray:
    """Drop leading/trailing near-silence, keeping a short margin so onsets are not clipped."""
    if samples.size == 0:
        return samples
    peak = float(np.max(np.abs(samples)))
    if peak == 0.0:
        return samples[:0]
    loud = np.flatnonzero(np.abs(samples) > threshold * peak)
    keep = int(keep_s * sample_rate)
    return samples[max(0, loud[0] - keep) : min(samples.size, loud[-1] + 1 + keep)]


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_dbfs: float) -> np.ndarray:
    if samples.size == 0:
        return samples
    frame = max(1, int(_FRAME_S * sample_rate))
    n = samples.size // frame
    if n == 0:
        rms = float(np.sqrt(np.mean(samples**2)))
    else:
        frames = samples[: n * frame].reshape(n, frame)
        frame_rms = np.sqrt(np.mean(frames**2, axis=1))
        # Gate out pauses so a sentence with long silences is not pushed louder than one without.
        voiced = frame_rms[frame_rms > 0.1 * frame_rms.max()] if frame_rms.max() > 0 else frame_rms
        rms = float(np.sqrt(np.mean(voiced**2))) if voiced.size else 0.0
    if rms < 1e-6:
        return samples
    gain = 10 ** (target_dbfs / 20) / rms
    peak = float(np.max(np.abs(samples))) * gain
    if peak > PEAK_CEILING:
        gain *= PEAK_CEILING / peak
    return (samples * gain).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class WavWriter:
    """Appends mono float chunks to a 16-bit WAV file, counting the samples written."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.samples_written = 0
        self._wav = wave.open(str(path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    @property
    def seconds(self) -> float:
        return self.samples_written / self.sample_rate

    def write(self, samples: np.ndarray) -> None:
        self._wav.writeframes(to_pcm16(samples))
        self.samples_written += samples.size

    def silence(self, seconds: float) -> None:
        self.write(np.zeros(int(round(seconds * self.sample_rate)), dtype=np.float32))

    def close(self) -> None:
        self._wav.close()


def find_ffmpeg(configured: str = "") -> str | None:
    if configured:
        return shutil.which(configured) or (configured if Path(configured).is_file() else None)
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # not installed, or its binary is missing for this platform
        return None


def encode_mp3(ffmpeg: str, wav_path: Path, mp3_path: Path, bitrate: str) -> None:
    run = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav_path),
         "-codec:a", "libmp3lame", "-b:a", bitrate, str(mp3_path)],
        capture_output=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise TaskfleetError(
            f"ffmpeg could not encode mp3: {run.stderr.decode('utf-8', 'replace').strip()[:300]}",
            code="encode_failed",
        )
