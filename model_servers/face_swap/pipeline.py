"""One face-swap job from input files to output files: checks first, then image or video path.

Runs in a worker thread (never on the event loop). Every limit (duration, pixels, kind of media,
a face in the source) is checked before the first frame is processed. Progress goes out through
``report(percent, message)`` every ``progress_every_frames`` frames; ``cancel`` is polled per batch.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from model_servers.face_swap.engine import Engine, FrameSwapper
from model_servers.face_swap.errors import (
    ImageTooLarge,
    InvalidMedia,
    JobCancelled,
    NoTargetFace,
    UnsupportedMedia,
    VideoTooLong,
)
from model_servers.face_swap.media import (
    CONTENT_TYPES,
    EncodeOptions,
    FramePool,
    MediaInfo,
    Tools,
    VideoDecoder,
    VideoEncoder,
    fit_size,
    identify,
    make_preview,
    read_image,
    write_image,
)
from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.workflows.face_swap import IMAGE_FORMATS, FaceSwapOptions
from taskfleet.workflows.face_swap_wire import OutputFile

Report = Callable[[float, str], None]
STILL_FORMATS = (*IMAGE_FORMATS, "gif")  # what an image target can be written as


@dataclass
class JobResult:
    outputs: list[tuple[OutputFile, Path]]
    metadata: dict = field(default_factory=dict)
    processing_time: float = 0.0


@dataclass
class Job:
    engine: Engine
    tools: Tools
    settings: FaceSwapSettings
    source: Path
    target: Path
    options: FaceSwapOptions
    workdir: Path
    report: Report = lambda percent, message: None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Seam for the benchmark: swap frames with something else (an identity) than the engine.
    swapper_factory: Callable[[np.ndarray, FaceSwapOptions, bool], FrameSwapper] | None = None

    def run(self) -> JobResult:
        started = time.perf_counter()
        source_info = identify(self.source, self.tools)
        if source_info.kind != "image":
            raise UnsupportedMedia("the source must be an image (jpg, png, webp)")
        target_info = identify(self.target, self.tools)
        if target_info.kind == "video":
            self._check_video(target_info)
        elif target_info.width * target_info.height > self.settings.max_image_pixels:
            raise ImageTooLarge(f"target image is {target_info.width}x{target_info.height}; too many pixels")
        source = read_image(self.source, source_info, self.settings.max_image_pixels)
        is_video = target_info.kind == "video"
        factory = self.swapper_factory or (lambda img, opts, video: self.engine.start(img, opts, video=video))
        swapper = factory(source, self.options, is_video)
        if is_video:
            result = self._video(target_info, swapper)
        else:
            result = self._image(target_info, swapper)
        result.metadata["engine"] = self.engine.name
        result.metadata["face_enhanced"] = bool(getattr(swapper, "enhanced", False))
        result.processing_time = round(time.perf_counter() - started, 3)
        result.metadata["processing_time"] = result.processing_time
        return result

    def _check_video(self, info: MediaInfo) -> None:
        limit = self.settings.max_video_s
        if info.duration_s > limit:
            raise VideoTooLong(f"video is {info.duration_s:.1f} s; the limit is {limit:g} s")
        if info.width * info.height > self.settings.max_image_pixels:
            raise ImageTooLarge(f"video frames are {info.width}x{info.height}; too many pixels")
        if info.width < 16 or info.height < 16:
            raise InvalidMedia(f"video frames are {info.width}x{info.height}; too small")

    def _image(self, info: MediaInfo, swapper: FrameSwapper) -> JobResult:
        img = read_image(self.target, info, self.settings.max_image_pixels)
        w, h = fit_size(img.shape[1], img.shape[0], self.options.resolution_box(), even=False)
        if (w, h) != (img.shape[1], img.shape[0]):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        out, faces = swapper.swap(img)
        if faces == 0:
            raise NoTargetFace("no face found in the target image")
        stills = [f for f in self.options.output_formats or [] if f in STILL_FORMATS]
        # The main output is an image format (the first asked, else the target's own); a gif is
        # only ever an extra beside it, as a video's previews are: one frame, the swapped still.
        main = next((f for f in stills if f in IMAGE_FORMATS), info.format)
        wanted = [main, *stills]
        outputs = []
        for i, fmt in enumerate(dict.fromkeys(wanted)):
            path = self.workdir / f"output.{fmt}"
            write_image(out, path, fmt)
            role = "main" if i == 0 else "extra"
            outputs.append((OutputFile(name=path.name, format=fmt, content_type=CONTENT_TYPES[fmt], size=path.stat().st_size, role=role), path))
        meta = {
            "faces_detected": faces,
            "frames_processed": 1,
            "fps": None,
            "duration_seconds": None,
            "width": w,
            "height": h,
            "media_type": "image",
        }
        return JobResult(outputs=outputs, metadata=meta)

    def _video(self, info: MediaInfo, swapper: FrameSwapper) -> JobResult:
        s, o = self.settings, self.options
        width, height = fit_size(info.width, info.height, o.resolution_box(), even=True)
        keep = o.keep_fps and info.fps > 0
        fps = info.fps if keep else s.default_fps
        expected = max(1, info.frames if keep else int(round(info.duration_s * fps)))
        audio = o.keep_audio and info.has_audio
        out_path = self.workdir / "output.mp4"
        batch = max(1, s.batch_frames)
        pool = FramePool(batch * 3 + 2, (height, width, 3))
        enc_opts = EncodeOptions(
            fps=fps,
            width=width,
            height=height,
            encoder=o.video_encoder,
            quality=o.video_quality,
            audio_from=self.target if audio else None,
            audio_codec=info.audio_codec,
        )
        frames = faces_max = 0
        next_report = s.progress_every_frames
        self.report(0.0, "swapping")
        workers = s.frame_workers if getattr(swapper, "parallel", False) else 1
        stack = ExitStack()
        pool_exec = stack.enter_context(ThreadPoolExecutor(workers, "face-swap")) if workers > 1 else None
        with stack, VideoDecoder(self.tools, self.target, width, height, fps=None if keep else fps, source_size=(info.width, info.height), pool=pool, cancel=self.cancel) as dec:
            with VideoEncoder(self.tools, out_path, enc_opts, on_written=pool.give) as enc:
                for frames_in in dec.batches(batch):
                    if self.cancel.is_set():
                        raise JobCancelled("cancelled")
                    results = pool_exec.map(swapper.swap, frames_in) if pool_exec else map(swapper.swap, frames_in)
                    swapped = []
                    for out, n in results:
                        faces_max = max(faces_max, n)
                        swapped.append(out)
                    enc.write(swapped, release=frames_in)
                    frames += len(frames_in)
                    if frames >= next_report:
                        next_report = frames + s.progress_every_frames
                        self.report(min(99.0, 95.0 * frames / expected), f"{frames}/{expected} frames")
        if frames == 0:
            raise InvalidMedia("the video has no decodable frames")
        outputs = [(self._describe(out_path, "mp4", "main"), out_path)]
        for fmt in ("gif", "webp"):
            if fmt in (o.output_formats or []):
                self.report(97.0, f"{fmt} preview")
                path = self.workdir / f"preview.{fmt}"
                make_preview(self.tools, out_path, path, fmt, seconds=s.preview_seconds, width=s.preview_width, cancel=self.cancel)
                outputs.append((self._describe(path, fmt, "preview"), path))
        meta = {
            "faces_detected": faces_max,
            "frames_processed": frames,
            "fps": round(fps, 3),
            "duration_seconds": round(frames / fps, 3),
            "width": width,
            "height": height,
            "audio": audio,
            "media_type": "video",
        }
        return JobResult(outputs=outputs, metadata=meta)

    @staticmethod
    def _describe(path: Path, fmt: str, role: str) -> OutputFile:
        return OutputFile(name=path.name, format=fmt, content_type=CONTENT_TYPES[fmt], size=path.stat().st_size, role=role)
