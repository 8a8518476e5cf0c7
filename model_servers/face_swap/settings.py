"""Settings of the face-swap model server (env prefix ``TASKFLEET_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from model_servers.base import ModelServerSettings


class FaceSwapSettings(ModelServerSettings):
    port: int = 8101
    face_swap_engine: Literal["insightface", "lite"] = "insightface"
    # Default swapper; a request's ``model`` picks another one that is installed.
    face_swap_model: Literal["inswapper_128_fp16", "inswapper_128"] = "inswapper_128_fp16"
    face_swap_analysis: str = "buffalo_l"  # {models_dir}/models/{name}/*.onnx, InsightFace's own layout
    face_swap_enhancer: str = "gfpgan_1.4.onnx"  # under models_dir; optional
    face_swap_det_size: int = 640
    face_swap_det_thresh: float = 0.5
    max_input_mb: int = 2048  # per uploaded file, checked while the upload streams in
    max_video_s: float = 600.0
    max_image_pixels: int = 50_000_000  # decompression-bomb guard for images
    default_fps: float = 30.0  # output rate when keep_fps is off
    batch_frames: int = 8
    # Threads swapping the frames of one batch at once (engines whose frames are independent).
    # 1 suits a CPU (ONNX Runtime already uses every core); 2-4 keep a GPU busy between frames.
    frame_workers: int = 1
    progress_every_frames: int = 25
    preview_seconds: float = 5.0
    preview_width: int = 480
    ffmpeg: str | None = None  # path to ffmpeg; default: PATH, then the imageio-ffmpeg wheel's binary
    work_dir: str | None = None  # where uploads and outputs of running jobs live; default: system temp

    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser()

    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]
