"""Tiny media for the text_to_video tests, made and read back with the real ffmpeg and ffprobe."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np


def ffmpeg(*args: str) -> bytes:
    run = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    return run.stdout


def still(path: Path, color: str, size: str = "64x64") -> Path:
    ffmpeg("-f", "lavfi", "-i", f"color=c={color}:s={size}", "-frames:v", "1", str(path))
    return path


def clip(path: Path, color: str, size: str = "80x40", seconds: float = 1.0, fps: int = 10) -> Path:
    """A short solid-colour video with a different aspect than the tests' frames."""
    ffmpeg("-f", "lavfi", "-i", f"color=c={color}:s={size}:r={fps}:d={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def tone(path: Path, seconds: float, freq: int = 440) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=f={freq}:d={seconds}:sample_rate=22050", str(path))
    return path


def silence(path: Path, seconds: float) -> Path:
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono", "-t", str(seconds), str(path))
    return path


def probe(path: Path | str) -> dict:
    run = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", "-count_frames", str(path)],
        capture_output=True,
    )
    assert run.returncode == 0, run.stderr.decode()
    return json.loads(run.stdout)


def stream(info: dict, kind: str) -> dict | None:
    return next((s for s in info["streams"] if s["codec_type"] == kind), None)


def frame_at(path: Path | str, t: float, width: int, height: int) -> np.ndarray:
    """The frame shown at ``t`` seconds, as an RGB array."""
    raw = ffmpeg("-ss", f"{t:.3f}", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1")
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def audio_rms(path: Path | str) -> float:
    raw = ffmpeg("-i", str(path), "-map", "0:a", "-ac", "1", "-ar", "8000", "-f", "s16le", "pipe:1")
    samples = np.frombuffer(raw, np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def close_to(pixel: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tolerance))
