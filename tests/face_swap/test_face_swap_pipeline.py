"""The video pipeline with the insightface engine (tiny models): parallel frame workers, enhancer."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np

import face_swap_tiny
from face_swap_helpers import count_frames, settings_for
from model_servers.face_swap.insightface_engine import InsightFaceEngine
from model_servers.face_swap.pipeline import Job
from taskfleet.workflows.face_swap import FaceSwapOptions


def decode_all(tools, path, size=640):
    raw = subprocess.run(
        [tools.ffmpeg, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


def test_video_on_insightface_sequential_and_parallel_agree(tiny_models, tools, tmp_path):
    still = tmp_path / "target.png"
    cv2.imwrite(str(still), face_swap_tiny.face_canvas([(4, 4, (245, 245, 245)), (14, 12, (205, 205, 205))]))
    clip = tmp_path / "target.mp4"
    subprocess.run(
        [tools.ffmpeg, "-v", "error", "-loop", "1", "-framerate", "12", "-i", str(still), "-t", "0.5",
         "-c:v", "libx264", "-preset", "ultrafast", "-crf", "0", "-pix_fmt", "yuv444p", str(clip)],
        check=True,
    )  # fmt: skip
    source = tmp_path / "source.png"
    cv2.imwrite(str(source), face_swap_tiny.face_canvas([(8, 8, (230, 200, 180))]))
    results = {}
    for workers in (1, 3):
        settings = settings_for(tiny_models, frame_workers=workers, batch_frames=4)
        engine = InsightFaceEngine(settings)
        engine.load()
        work = tmp_path / f"w{workers}"
        work.mkdir()
        reports = []
        job = Job(
            engine=engine, tools=tools, settings=settings, source=source, target=clip,
            options=FaceSwapOptions(many_faces=True, face_enhancer=True, video_quality=100),
            workdir=work, report=lambda p, m: reports.append(p),
        )  # fmt: skip
        result = job.run()
        meta = result.metadata
        assert meta["frames_processed"] == 6 == count_frames(tools, work / "output.mp4")
        assert meta["faces_detected"] == 2 and meta["face_enhanced"] is True and meta["audio"] is False
        assert reports == sorted(reports)
        results[workers] = decode_all(tools, work / "output.mp4")
    original = decode_all(tools, clip)
    assert np.abs(results[1][:, 130:158, 130:158].astype(int) - original[:, 130:158, 130:158]).mean() > 10
    # Frames come back in order and alike whether one thread or three swapped them.
    assert np.abs(results[1].astype(int) - results[3]).mean() < 0.5


def test_video_path_with_the_wheel_ffmpeg_and_no_ffprobe(tmp_path, photos, clips, tools):
    import imageio_ffmpeg

    from model_servers.face_swap.lite_engine import LiteEngine
    from model_servers.face_swap.media import Tools

    wheel = Tools(ffmpeg=imageio_ffmpeg.get_ffmpeg_exe(), ffprobe=None)
    settings = settings_for(tmp_path, face_swap_engine="lite")
    engine = LiteEngine(settings)
    engine.load()
    job = Job(
        engine=engine, tools=wheel, settings=settings, source=photos["astronaut"], target=clips["audio"],
        options=FaceSwapOptions(output_formats=["mp4", "webp"]), workdir=tmp_path,
    )  # fmt: skip
    meta = job.run().metadata
    assert meta["frames_processed"] == 50 == count_frames(tools, tmp_path / "output.mp4")
    assert meta["fps"] == 25 and meta["audio"] is True and meta["faces_detected"] == 1
    assert (tmp_path / "preview.webp").read_bytes()[8:12] == b"WEBP"
