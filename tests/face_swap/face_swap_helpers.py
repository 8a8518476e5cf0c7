"""Helpers for the face-swap tests: clips made by ffmpeg, stream inspection, a client, engine doubles."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx

from model_servers.face_swap.settings import FaceSwapSettings


def make_clip(tools, image: Path, out: Path, *, seconds: float, fps: float, size: int = 256, audio: bool) -> Path:
    """A clip of a still photo with a slow zoom (so frames differ), optionally with a 440 Hz tone."""
    cmd = [tools.ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-framerate", f"{fps:g}", "-i", str(image)]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds:g}"]
    cmd += [
        "-t", f"{seconds:g}",
        "-vf", f"scale={size}:{size},zoompan=z='1+0.001*on':d=1:s={size}x{size}:fps={fps:g}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-r", f"{fps:g}",
    ]  # fmt: skip
    if audio:
        cmd += ["-c:a", "aac", "-shortest"]
    subprocess.run(cmd + [str(out)], check=True, timeout=120)
    return out


def count_frames(tools, path: Path) -> int:
    out = subprocess.run(
        [tools.ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.strip())


def stream_types(tools, path: Path) -> list[str]:
    out = subprocess.run(
        [tools.ffprobe, "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def settings_for(models_dir: Path, **kw) -> FaceSwapSettings:
    base = dict(models_dir=str(models_dir), providers="CPUExecutionProvider", progress_every_frames=10)
    return FaceSwapSettings(**{**base, **kw})


def post_process(url: str, source: Path, target: Path, options: dict | None = None, timeout: float = 120):
    """POST /process and parse the streamed multipart/mixed answer; returns (status, events, files)."""
    from taskfleet.workflows.face_swap_wire import FileSink, MemorySink, MultipartReader

    outdir = Path(target).parent / f"out-{time.monotonic_ns()}"
    outdir.mkdir()
    events: list[tuple[str, object]] = []
    files: dict[str, Path] = {}

    def open_part(part):
        if part.filename:
            return FileSink(part.filename, outdir / part.filename, 1 << 32)
        return MemorySink(part.name)

    def done(part, sink):
        if isinstance(sink, FileSink):
            files[sink.name] = sink.path
        else:
            events.append((part.name, json.loads(sink.value())))

    with open(source, "rb") as s, open(target, "rb") as t:
        form = {"source": ("s", s), "target": ("t", t)}
        data = {"options": json.dumps(options or {})}
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            with client.stream("POST", url + "/process", files=form, data=data) as resp:
                if resp.status_code != 200:
                    resp.read()
                    return resp.status_code, resp.json(), {}
                reader = MultipartReader(resp.headers["content-type"], open_part, done)
                for chunk in resp.iter_bytes():
                    reader.feed(chunk)
                assert reader.finished
    return 200, events, files


def video_codec(tools, path: Path) -> tuple[str, str]:
    """The first video stream's codec and its tag in the container (``hvc1`` makes Apple players open HEVC)."""
    out = subprocess.run(
        [tools.ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name,codec_tag_string",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    name, tag = out.stdout.strip().split(",")
    return name, tag


class GateEngine:
    """Swaps nothing; each frame waits on ``gate`` (or sleeps ``frame_s``) and is counted."""

    name, device = "gate", "cpu"

    def __init__(self, frame_s: float = 0.0) -> None:
        self.gate = threading.Event()
        self.frame_s = frame_s
        self.lock = threading.Lock()
        self.running = self.max_running = self.frames = 0

    def load(self) -> str:
        return "gate ready"

    def start(self, source, options, *, video):
        return self

    enhanced = False

    def swap(self, frame):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.frame_s:
                time.sleep(self.frame_s)
            else:
                self.gate.wait(30)
            with self.lock:
                self.frames += 1
        finally:
            with self.lock:
                self.running -= 1
        return frame, 1


def oversized_session():
    """An ONNX Runtime session whose one node asks for an exabyte of floats.

    More than any address space, so every run fails at once, touching nothing, with ORT's own
    allocation error (raised by the same memory arena that reports a GPU running out).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [0.0])
    node = helper.make_node("ConstantOfShape", ["shape"], ["out"], value=fill)
    graph = helper.make_graph(
        [node], "oversized",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class OutOfMemoryEngine:
    """An engine whose every frame runs ``oversized_session``; ``jobs`` counts the jobs it started."""

    name, device = "oversized", "cpu"
    enhanced = parallel = False

    def __init__(self) -> None:
        self.session = None
        self.jobs = 0

    def load(self) -> str:
        self.session = oversized_session()
        return "oversized ready"

    def start(self, source, options, *, video):
        self.jobs += 1
        return self

    def swap(self, frame):
        import numpy as np

        self.session.run(None, {"shape": np.array([1 << 58], np.int64)})
        return frame, 1
