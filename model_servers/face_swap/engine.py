"""What a face-swap engine offers the pipeline, and the engine chosen by settings.

An engine loads its models once; ``start`` prepares one job (finds the source face) and returns a
``FrameSwapper`` that swaps frame after frame and may keep state between frames (the lite engine
reuses detections across frames of a video).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.workflows.face_swap import FaceSwapOptions


class FrameSwapper(Protocol):
    enhanced: bool
    parallel: bool  # frames are independent: a batch may be swapped by several threads at once

    def swap(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        """The frame with faces swapped (may be the same array, changed in place) and how many."""


class Engine(Protocol):
    name: str
    device: str

    def load(self) -> str:
        """Load models; returns a status line, raises ``EngineUnavailable`` with the reason."""

    def start(self, source: np.ndarray, options: FaceSwapOptions, *, video: bool) -> FrameSwapper:
        """Prepare one job; ``NoSourceFace`` when the source image has no face."""


def build_engine(settings: FaceSwapSettings) -> Engine:
    if settings.face_swap_engine == "lite":
        from model_servers.face_swap.lite_engine import LiteEngine

        return LiteEngine(settings)
    from model_servers.face_swap.insightface_engine import InsightFaceEngine

    return InsightFaceEngine(settings)


def largest(boxes: list[np.ndarray] | np.ndarray) -> int:
    """Index of the box (x0, y0, x1, y1, ...) with the largest area."""
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return int(np.argmax(areas))
