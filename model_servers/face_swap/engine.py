"""What a face-swap engine offers the pipeline (the engines implement it; ``engine_factory.py`` picks one).

An engine loads its models once; ``start`` prepares one job (finds the source face) and returns a
``FrameSwapper`` that swaps frame after frame and may keep state between frames (the lite engine
reuses detections across frames of a video).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

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

