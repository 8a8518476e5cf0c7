"""Frames/s of the face-swap video path, with an identity swap, on a 10 s 720p30 clip with audio.

Measured in one run, side by side, on the same clip and the same encoder settings:
  (a) ffmpeg alone: decode -> raw bgr24 pipe -> encode (+ audio mux), two ffmpeg processes, no Python
  (b) the original serverless design: extract PNG files, read/write each PNG in Python, encode the
      PNGs, then mux the audio in a fourth pass
  ours: the server's pipeline (model_servers/face_swap/pipeline.py) with the engine replaced by an
      identity, so the figure is the I/O path's ceiling
Targets: ours >= 0.8x (a) and >= 5x (b).
With --engine lite it also reports the lite engine's real swap rate on the clip (a face is drawn in).
On a machine with a GPU and real models, --inswapper MODELS_DIR reports inswapper frames/s at 720p.

    python bench/face_swap_bench.py [--seconds 10] [--repeat 1] [--quality 80] [--engine lite] [--inswapper DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from model_servers.face_swap.media import crf_for, find_tools
from model_servers.face_swap.pipeline import Job
from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.workflows.face_swap import FaceSwapOptions

W, H, FPS = 1280, 720, 30
QUALITY = 80  # the workflow's default video_quality (--quality changes it for every path alike)


def make_clip(ffmpeg: str, out: Path, seconds: float, face: Path | None) -> None:
    """testsrc2 (moving, detailed) with a tone; optionally a real face photo overlaid in the middle."""
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate={FPS}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]  # fmt: skip
    if face is not None:
        cmd += ["-i", str(face), "-filter_complex", "[2:v]scale=400:-2[f];[0:v][f]overlay=(W-w)/2:(H-h)/2[v]", "-map", "[v]", "-map", "1:a"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)]
    subprocess.run(cmd, check=True)


def encoder_args(quality: int) -> list[str]:
    return ["-c:v", "libx264", "-crf", str(crf_for(quality)), "-preset", "veryfast", "-pix_fmt", "yuv420p"]


def bench_ffmpeg_pipe(ffmpeg: str, clip: Path, out: Path, quality: int) -> None:
    dec = subprocess.Popen(
        [ffmpeg, "-v", "error", "-nostdin", "-i", str(clip), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"],
        stdout=subprocess.PIPE,
    )
    enc = subprocess.Popen(
        [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{W}x{H}", "-framerate", str(FPS),
         "-i", "pipe:0", "-i", str(clip), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "copy", "-shortest",
         *encoder_args(quality), "-movflags", "+faststart", str(out)],
        stdin=dec.stdout,
    )  # fmt: skip
    assert dec.stdout is not None
    dec.stdout.close()
    enc.wait()
    dec.wait()
    if enc.returncode or dec.returncode:
        raise RuntimeError("ffmpeg pipe failed")


def bench_png_design(ffmpeg: str, clip: Path, out: Path, work: Path, quality: int) -> None:
    frames = work / "frames"
    frames.mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-i", str(clip), "-pix_fmt", "rgb24", str(frames / "%04d.png")], check=True)
    for path in sorted(frames.glob("*.png")):  # the original processes frame files one by one, in place
        frame = cv2.imread(str(path))
        cv2.imwrite(str(path), frame)
    temp = work / "temp.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-r", str(FPS), "-i", str(frames / "%04d.png"), *encoder_args(quality), str(temp)], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(temp), "-i", str(clip), "-c:v", "copy", "-map", "0:v:0",
                    "-map", "1:a:0", "-c:a", "copy", "-shortest", str(out)], check=True)  # fmt: skip


class Identity:
    enhanced = False

    def swap(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        return frame, 0


class _NoEngine:
    name, device = "identity", "cpu"


def bench_ours(settings: FaceSwapSettings, clip: Path, source: Path, work: Path, quality: int, engine=None) -> dict:
    job = Job(
        engine=engine or _NoEngine(),
        tools=find_tools(settings.ffmpeg),
        settings=settings,
        source=source,
        target=clip,
        options=FaceSwapOptions(keep_fps=True, keep_audio=True, video_quality=quality),
        workdir=work,
        swapper_factory=None if engine else (lambda img, opts, video: Identity()),
    )
    return job.run().metadata


def count_frames(clip: Path) -> int:
    cap = cv2.VideoCapture(str(clip))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each path; medians are printed")
    parser.add_argument("--quality", type=int, default=QUALITY, help="video_quality 0-100 (CRF = 51 - 0.51 q)")
    parser.add_argument("--engine", choices=["lite"], help="also time a real swap with this engine")
    parser.add_argument("--inswapper", metavar="MODELS_DIR", help="also time the insightface engine (real models)")
    args = parser.parse_args()

    settings = FaceSwapSettings(batch_frames=8, progress_every_frames=10_000)
    tools = find_tools(settings.ffmpeg)
    root = Path(tempfile.mkdtemp(prefix="fsbench-"))
    try:
        from skimage import data

        source = root / "source.png"
        cv2.imwrite(str(source), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        clip = root / "clip.mp4"
        make_clip(tools.ffmpeg, clip, args.seconds, face=None)
        frames = count_frames(clip)
        print(f"clip: {W}x{H} {FPS} fps, {args.seconds:g} s, {frames} frames, aac audio; encoder libx264 veryfast crf {crf_for(args.quality)}")
        print(f"ffmpeg: {tools.ffmpeg}; cores: {os.cpu_count()}")
        runs: dict[str, list[float]] = {"a": [], "b": [], "ours": []}
        for i in range(args.repeat):
            # Interleaved so that a machine's drift hits every path alike.
            w = root / f"run{i}"
            w.mkdir()
            runs["a"].append(timed(bench_ffmpeg_pipe, tools.ffmpeg, clip, w / "a.mp4", args.quality))
            (w / "b").mkdir()
            runs["b"].append(timed(bench_png_design, tools.ffmpeg, clip, w / "b.mp4", w / "b", args.quality))
            (w / "ours").mkdir()
            start = time.perf_counter()
            meta = bench_ours(settings, clip, source, w / "ours", args.quality)
            runs["ours"].append(time.perf_counter() - start)
            assert meta["frames_processed"] == frames, meta
            shutil.rmtree(w)
        fps = {k: frames / statistics.median(v) for k, v in runs.items()}
        print(f"(a) ffmpeg decode -> pipe -> encode : {fps['a']:7.1f} frames/s")
        print(f"(b) PNG extraction (original design): {fps['b']:7.1f} frames/s")
        print(f"ours, identity swap                 : {fps['ours']:7.1f} frames/s")
        print(f"ours / (a) = {fps['ours'] / fps['a']:.2f} (target >= 0.8)   ours / (b) = {fps['ours'] / fps['b']:.2f} (target >= 5)")

        engines = []
        if args.engine == "lite":
            from model_servers.face_swap.lite_engine import LiteEngine

            engines.append((LiteEngine(settings), settings))
        if args.inswapper:
            from model_servers.face_swap.insightface_engine import InsightFaceEngine

            s = settings.model_copy(update={"models_dir": args.inswapper})
            engines.append((InsightFaceEngine(s), s))
        if engines:
            import matplotlib.cbook as cbook

            face = root / "hopper.jpg"
            with cbook.get_sample_data("grace_hopper.jpg") as fh:
                face.write_bytes(fh.read())
            faced = root / "faced.mp4"
            make_clip(tools.ffmpeg, faced, args.seconds, face=face)  # the clip with a real face in it
        for eng, s in engines:
            print(eng.load())
            work = root / eng.name
            work.mkdir()
            start = time.perf_counter()
            meta = bench_ours(s, faced, source, work, args.quality, engine=eng)
            rate = meta["frames_processed"] / (time.perf_counter() - start)
            print(f"{eng.name} engine ({eng.device}), real swap, 720p: {rate:7.1f} frames/s (faces per frame: {meta['faces_detected']})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
