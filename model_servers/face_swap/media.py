"""Media in and out: what a file is, image decode/encode, and video frames through ffmpeg pipes.

Video never touches disk as frame images: one ffmpeg decodes to raw BGR on a pipe, Python works on
batches of frames held in a small pool of reused buffers, and a second ffmpeg encodes from its stdin
(muxing the original audio in the same pass). Hand-written on ``subprocess`` rather than
imageio-ffmpeg's generators because we need buffer reuse, an audio input beside the pipe and a
stderr we can report; imageio-ffmpeg still supplies the binary when the system has none.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from model_servers.face_swap.errors import (
    ImageTooLarge,
    InvalidMedia,
    JobCancelled,
    MediaToolError,
    UnsupportedMedia,
)

IMAGE_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
CONTENT_TYPES = {**IMAGE_CONTENT_TYPES, "mp4": "video/mp4"}


@dataclass(frozen=True)
class Tools:
    ffmpeg: str
    ffprobe: str | None


def find_tools(configured: str | None = None) -> Tools:
    """ffmpeg from settings, else PATH, else the imageio-ffmpeg wheel (which ships no ffprobe)."""
    ffmpeg = configured or shutil.which("ffmpeg")
    if not ffmpeg:
        try:
            import imageio_ffmpeg

            ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        except Exception as exc:  # the wheel raises RuntimeError when its binary is missing
            raise MediaToolError(f"no ffmpeg found: {exc}", retryable=False) from None
    probe = Path(ffmpeg).with_name("ffprobe")
    ffprobe = str(probe) if probe.exists() else shutil.which("ffprobe")
    return Tools(ffmpeg=ffmpeg, ffprobe=ffprobe)


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # "image" | "video"
    format: str  # jpg/png/webp for images, the container name for videos
    width: int
    height: int
    fps: float = 0.0
    duration_s: float = 0.0
    frames: int = 0  # estimate from the container; the decoder's count is the truth
    has_audio: bool = False
    audio_codec: str | None = None


def sniff_image_format(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def sniff_video_container(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def identify(path: Path, tools: Tools) -> MediaInfo:
    """Image by magic bytes (cheap, exact), otherwise whatever ffmpeg finds a video stream in."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise InvalidMedia("the file is empty")
    fmt = sniff_image_format(head)
    if fmt is not None:
        return _image_info(path, fmt)
    info = probe_video(path, tools)
    if info is None and (container := sniff_video_container(head)):
        raise InvalidMedia(f"the file looks like {container} but cannot be read (truncated or corrupt)")
    if info is None:
        raise UnsupportedMedia("the file is neither an image (jpg, png, webp) nor a video ffmpeg can read")
    return info


def _image_info(path: Path, fmt: str) -> MediaInfo:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InvalidMedia(f"the {fmt} image cannot be read: {exc}") from None
    return MediaInfo(kind="image", format=fmt, width=width, height=height)


def probe_video(path: Path, tools: Tools) -> MediaInfo | None:
    if tools.ffprobe:
        return _probe_ffprobe(path, tools.ffprobe)
    return _probe_ffmpeg(path, tools.ffmpeg)


def _probe_ffprobe(path: Path, ffprobe: str) -> MediaInfo | None:
    proc = subprocess.run(
        [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError:
        return None
    streams = data.get("streams") or []
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        return None
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    fmt = data.get("format") or {}
    if fmt.get("format_name", "").endswith("_pipe") or fmt.get("format_name") == "image2":
        return None  # a still image in a format we do not take (bmp, tiff...)
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if _rotation(video) in (90, 270):
        width, height = height, width  # ffmpeg auto-rotates while decoding
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    duration = _float(video.get("duration")) or _float(fmt.get("duration"))
    frames = int(video.get("nb_frames") or 0) or int(round(duration * fps))
    return MediaInfo(
        kind="video",
        format=str(fmt.get("format_name", "")).split(",")[0],
        width=width,
        height=height,
        fps=fps,
        duration_s=duration,
        frames=frames,
        has_audio=audio is not None,
        audio_codec=audio.get("codec_name") if audio else None,
    )


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?Video: (?P<codec>\w+).*?, (?P<w>\d{2,5})x(?P<h>\d{2,5})[\s,\[]")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*fps")
_AUDIO = re.compile(r"Stream #\S+.*?Audio: (\w+)")
_INPUT = re.compile(r"Input #0, ([\w,]+),")
_ROTATE = re.compile(r"(?:rotate\s*:\s*|rotation of\s*)(-?\d+)")


def _probe_ffmpeg(path: Path, ffmpeg: str) -> MediaInfo | None:
    """Parse ``ffmpeg -i`` when there is no ffprobe (the imageio-ffmpeg wheel ships none)."""
    proc = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, timeout=60)
    text = proc.stderr.decode("utf-8", "replace")
    video = _VIDEO.search(text)
    container = _INPUT.search(text)
    if video is None or container is None:
        return None
    if container[1].endswith("_pipe") or container[1] == "image2":
        return None
    width, height = int(video["w"]), int(video["h"])
    rotate = _ROTATE.search(text)
    if rotate and abs(int(float(rotate[1]))) % 180 == 90:
        width, height = height, width
    duration = 0.0
    if m := _DURATION.search(text):
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    line = text[video.start() : text.find("\n", video.start())]
    fps = float(m[1]) if (m := _FPS.search(line)) else 0.0
    audio = _AUDIO.search(text)
    return MediaInfo(
        kind="video",
        format=container[1].split(",")[0],
        width=width,
        height=height,
        fps=fps,
        duration_s=duration,
        frames=int(round(duration * fps)),
        has_audio=audio is not None,
        audio_codec=audio[1] if audio else None,
    )


def _rotation(stream: dict) -> int:
    rotate = (stream.get("tags") or {}).get("rotate")
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            rotate = side["rotation"]
    try:
        return abs(int(float(rotate))) % 360 if rotate is not None else 0
    except ValueError:
        return 0


def _rate(text: str | None) -> float:
    if not text or text in ("0/0", "0"):
        return 0.0
    num, _, den = text.partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def read_image(path: Path, info: MediaInfo, max_pixels: int) -> np.ndarray:
    if info.width * info.height > max_pixels:
        raise ImageTooLarge(f"image is {info.width}x{info.height}; the limit is {max_pixels} pixels")
    # IMREAD_COLOR applies the EXIF orientation, like a viewer would.
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidMedia(f"the {info.format} image cannot be decoded")
    return img


def write_image(img: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "gif":
        _write_gif(img, path)
        return
    params = {
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, 95],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, 95],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    }[fmt]
    ok, buf = cv2.imencode("." + fmt, img, params)
    if not ok:
        raise MediaToolError(f"could not encode {fmt}")
    path.write_bytes(buf.tobytes())


def _write_gif(img: np.ndarray, path: Path) -> None:
    """A one-frame gif of a still (what the seed returned); OpenCV builds need not have a gif writer."""
    from PIL import Image

    rgb = Image.fromarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    # An adaptive palette of the picture's own 256 colours, dithered: a photo survives the gif limit.
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(path, format="GIF")


def fit_size(width: int, height: int, box: tuple[int, int] | None, *, even: bool) -> tuple[int, int]:
    """The size inside ``box`` with the same aspect ratio (never upscaled); even sides for yuv420p."""
    if box is not None:
        scale = min(box[0] / width, box[1] / height, 1.0)
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
    if even:
        width, height = width - width % 2, height - height % 2
    return width, height


def crf_for(quality: int) -> int:
    """0-100 quality (higher better) to CRF/CQ 0-51, FaceFusion's mapping."""
    return round(51 - quality * 0.51)


@dataclass(frozen=True)
class EncodeOptions:
    fps: float
    width: int
    height: int
    encoder: str = "libx264"
    quality: int = 80
    audio_from: Path | None = None  # mux this file's first audio stream
    audio_codec: str | None = None


def encoder_args(opts: EncodeOptions) -> list[str]:
    q = str(crf_for(opts.quality))
    if opts.encoder in ("libx264", "libx265"):
        args = ["-c:v", opts.encoder, "-crf", q, "-preset", "veryfast"]
    else:  # NVENC: constant-quality mode
        args = ["-c:v", opts.encoder, "-rc", "vbr", "-cq", q, "-b:v", "0", "-preset", "p4"]
    if opts.encoder == "libx265":
        args += ["-tag:v", "hvc1"]  # so Apple players open it
    return args + ["-pix_fmt", "yuv420p"]


class FramePool:
    """Reused frame buffers: decoding into them avoids a fresh 2.7 MB allocation per 720p frame."""

    def __init__(self, count: int, shape: tuple[int, int, int]) -> None:
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(count):
            self._free.put(np.empty(shape, np.uint8))

    def take(self, cancel: threading.Event) -> np.ndarray | None:
        while not cancel.is_set():
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def give(self, buf: np.ndarray) -> None:
        self._free.put(buf)


_END = object()


class VideoDecoder:
    """ffmpeg → raw BGR frames on a pipe, read by a thread into pooled buffers, handed out in batches."""

    def __init__(
        self,
        tools: Tools,
        path: Path,
        width: int,
        height: int,
        *,
        fps: float | None,
        source_size: tuple[int, int],
        pool: FramePool,
        cancel: threading.Event,
    ) -> None:
        vf = []
        if fps:
            vf.append(f"fps={fps:.6g}")
        if source_size != (width, height):
            vf.append(f"scale={width}:{height}:flags=bicubic")
        self.cmd = [
            tools.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", "0:v:0",
            *(["-vf", ",".join(vf)] if vf else []), "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1",
        ]  # fmt: skip
        self.frame_bytes = width * height * 3
        self.pool, self.cancel = pool, cancel
        self._frames: queue.Queue = queue.Queue(maxsize=64)
        self._proc: subprocess.Popen | None = None
        self._stderr = b""
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def __enter__(self) -> "VideoDecoder":
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()
        self._thread = threading.Thread(target=self._read, name="ffmpeg-decode", daemon=True)
        self._thread.start()
        return self

    def _drain_stderr(self) -> None:
        assert self._proc and self._proc.stderr
        self._stderr = self._proc.stderr.read()[-4000:]

    def _read(self) -> None:
        assert self._proc and self._proc.stdout
        out = self._proc.stdout
        try:
            while True:
                buf = self.pool.take(self.cancel)
                if buf is None:
                    break
                view = memoryview(buf).cast("B")
                got = 0
                while got < self.frame_bytes:
                    n = out.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got < self.frame_bytes:  # EOF (a trailing partial frame is dropped)
                    self.pool.give(buf)
                    break
                self._frames.put(buf)
        except Exception as exc:  # a broken pipe ends the stream; the caller reports it
            self.error = str(exc)
        finally:
            self._frames.put(_END)

    def batches(self, size: int) -> Iterator[list[np.ndarray]]:
        batch: list[np.ndarray] = []
        while True:
            item = self._frames.get()
            if item is _END:
                break
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def __exit__(self, *exc_info) -> None:
        proc = self._proc
        assert proc is not None
        if exc_info[0] is not None or self.cancel.is_set():
            proc.kill()
        # Unblock the reader if it waits for the consumer side, then reap everything.
        while self._thread and self._thread.is_alive():
            try:
                item = self._frames.get(timeout=0.1)
                if item is not _END and isinstance(item, np.ndarray):
                    self.pool.give(item)
            except queue.Empty:
                pass
        rc = proc.wait()
        self._err_thread.join(timeout=5)
        if exc_info[0] is None and not self.cancel.is_set() and rc != 0:
            raise InvalidMedia(f"ffmpeg could not decode the video: {self._stderr.decode('utf-8', 'replace').strip()[-500:]}")


class VideoEncoder:
    """Raw BGR frames → ffmpeg's stdin, written by a thread so encoding overlaps the next batch."""

    def __init__(self, tools: Tools, out_path: Path, opts: EncodeOptions, on_written: Callable[[np.ndarray], None]) -> None:
        cmd = [
            tools.ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{opts.width}x{opts.height}",
            "-framerate", f"{opts.fps:.6g}", "-i", "pipe:0",
        ]  # fmt: skip
        if opts.audio_from is not None:
            cmd += ["-i", str(opts.audio_from), "-map", "0:v:0", "-map", "1:a:0"]
            cmd += ["-c:a", "copy"] if opts.audio_codec in ("aac", "mp3") else ["-c:a", "aac", "-b:a", "192k"]
            cmd += ["-shortest"]
        cmd += encoder_args(opts) + ["-movflags", "+faststart", str(out_path)]
        self.cmd = cmd
        self.on_written = on_written
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._proc: subprocess.Popen | None = None
        self._stderr = b""
        self.error: str | None = None
        self.frames_written = 0

    def __enter__(self) -> "VideoEncoder":
        self._proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()
        self._thread = threading.Thread(target=self._write, name="ffmpeg-encode", daemon=True)
        self._thread.start()
        return self

    def _drain_stderr(self) -> None:
        assert self._proc and self._proc.stderr
        self._stderr = self._proc.stderr.read()[-4000:]

    def write(self, frames: list[np.ndarray], release: list[np.ndarray]) -> None:
        """Queue frames for encoding; ``release`` buffers go back to the pool once written."""
        if self.error:
            raise MediaToolError(f"ffmpeg encoder failed: {self._stderr_text()}")
        self._queue.put((frames, release))

    def _write(self) -> None:
        assert self._proc and self._proc.stdin
        stdin = self._proc.stdin
        while True:
            item = self._queue.get()
            if item is _END:
                break
            frames, release = item
            try:
                if self.error is None:
                    for frame in frames:
                        stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
                        self.frames_written += 1
            except (BrokenPipeError, OSError) as exc:
                self.error = str(exc)
            finally:
                for buf in release:
                    self.on_written(buf)
        try:
            stdin.close()
        except OSError:
            pass

    def _stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()[-500:]

    def __exit__(self, *exc_info) -> None:
        self._queue.put(_END)
        self._thread.join()
        assert self._proc is not None
        if exc_info[0] is not None:
            self._proc.kill()
        rc = self._proc.wait()
        self._err_thread.join(timeout=5)
        if exc_info[0] is None and (rc != 0 or self.error):
            raise MediaToolError(f"ffmpeg encoder failed (rc={rc}): {self._stderr_text()}")


def make_preview(tools: Tools, video: Path, out: Path, fmt: str, *, seconds: float, width: int, cancel: threading.Event) -> None:
    """A short, small animated gif/webp of the result for listings."""
    scale = f"fps=10,scale='min({width},iw)':-2:flags=lanczos"
    if fmt == "gif":
        # A palette per clip keeps gif colours from banding.
        args = ["-vf", f"{scale},split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=bayer", "-loop", "0"]
    else:
        args = ["-vf", scale, "-c:v", "libwebp_anim", "-quality", "70", "-loop", "0", "-an"]
    cmd = [tools.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-t", f"{seconds:g}", "-i", str(video)]
    run_tool(cmd + args + [str(out)], cancel)


def run_tool(cmd: list[str], cancel: threading.Event, timeout_s: float = 600) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = _communicate(proc, cancel, timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise MediaToolError(f"ffmpeg failed: {err.decode('utf-8', 'replace').strip()[-500:]}")


def _communicate(proc: subprocess.Popen, cancel: threading.Event, timeout_s: float) -> tuple[bytes, bytes]:
    waited = 0.0
    while True:
        try:
            return proc.communicate(timeout=0.25)
        except subprocess.TimeoutExpired:
            waited += 0.25
            if cancel.is_set():
                raise JobCancelled("cancelled") from None
            if waited > timeout_s:
                raise MediaToolError("ffmpeg took too long") from None
