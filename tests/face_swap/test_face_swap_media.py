"""Media probing and identification: ffprobe and the ffmpeg-only fallback agree; bad files get codes."""

from __future__ import annotations

import dataclasses

import pytest

from face_swap_helpers import post_process
from model_servers.face_swap.errors import InvalidMedia, UnsupportedMedia
from model_servers.face_swap.media import Tools, fit_size, identify, probe_video


def test_ffprobe_and_ffmpeg_fallback_agree(tools, clips):
    assert tools.ffprobe, "Debian's ffmpeg package ships ffprobe"
    no_probe = Tools(ffmpeg=tools.ffmpeg, ffprobe=None)
    for name, has_audio in (("audio", True), ("silent", False)):
        a, b = probe_video(clips[name], tools), probe_video(clips[name], no_probe)
        assert a is not None and b is not None
        assert (a.kind, a.width, a.height, a.has_audio) == (b.kind, b.width, b.height, b.has_audio) == ("video", 256, 256, has_audio)
        assert abs(a.fps - b.fps) < 0.01 and abs(a.duration_s - b.duration_s) < 0.1
    assert dataclasses.replace(probe_video(clips["audio"], tools)).audio_codec == "aac"


def test_identify_images_by_magic_and_reject_the_rest(tools, photos, tmp_path):
    assert identify(photos["hopper"], tools).format == "jpg"
    info = identify(photos["astronaut"], tools)
    assert (info.kind, info.format, info.width, info.height) == ("image", "png", 512, 512)
    text = tmp_path / "a.txt"
    text.write_text("just text")
    with pytest.raises(UnsupportedMedia):
        identify(text, tools)
    wav = tmp_path / "a.wav"  # audio only: not a video
    import subprocess

    subprocess.run([tools.ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=duration=0.2", str(wav)], check=True)
    with pytest.raises(UnsupportedMedia):
        identify(wav, tools)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(InvalidMedia):
        identify(empty, tools)


def test_fit_size_keeps_aspect_and_even_sides():
    assert fit_size(1920, 1080, (1280, 1280), even=True) == (1280, 720)
    assert fit_size(641, 481, None, even=True) == (640, 480)
    assert fit_size(300, 200, (1000, 1000), even=False) == (300, 200)  # never upscaled


def test_a_truncated_video_ends_with_a_clear_code(lite_server, photos, clips, tmp_path):
    data = clips["audio"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov at the end (no faststart): the index is gone
    status, body, _ = post_process(lite_server.url, photos["astronaut"], cut)
    assert status == 422 and body["error"]["code"] == "invalid_media"
