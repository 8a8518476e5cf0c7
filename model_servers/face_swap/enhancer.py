"""GFPGAN 1.4 (ONNX) face restoration, run on swapped faces only.

The face is aligned to the FFHQ 512 template by its five keypoints, restored, and blended back
through a feathered box mask (FaceFusion's flow; 80 % restored, 20 % swapped keeps identity).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from model_servers.face_swap.blend import paste_back, soft_box_mask

# FFHQ 512 alignment template for the five InsightFace keypoints, as fractions of the crop side.
FFHQ_TEMPLATE = np.array(
    [
        [0.37691676, 0.46864664],
        [0.62285697, 0.46912813],
        [0.50123859, 0.61331904],
        [0.39308822, 0.72541100],
        [0.61150205, 0.72490465],
    ],
    np.float32,
)
BLEND = 0.8


class FaceEnhancer:
    def __init__(self, path: Path, providers: list[str]) -> None:
        self.session = ort.InferenceSession(str(path), providers=providers)
        inp = self.session.get_inputs()[0]
        if len(self.session.get_inputs()) != 1 or len(inp.shape) != 4:
            raise ValueError(f"{path.name} is not a one-input image model")
        side = inp.shape[2]
        self.size = side if isinstance(side, int) and side > 0 else 512
        self.input_name = inp.name
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.template = FFHQ_TEMPLATE * self.size
        self.mask = soft_box_mask(self.size, 0.3) * BLEND

    def enhance(self, frame: np.ndarray, kps: np.ndarray) -> None:
        affine, _ = cv2.estimateAffinePartial2D(
            kps.astype(np.float32), self.template, method=cv2.RANSAC, ransacReprojThreshold=100
        )
        if affine is None:
            return
        crop = cv2.warpAffine(frame, affine, (self.size, self.size), borderMode=cv2.BORDER_REPLICATE)
        x = (crop[:, :, ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
        x = x.transpose(2, 0, 1)[None].astype(self.dtype)
        y = self.session.run(None, {self.input_name: x})[0][0].astype(np.float32)
        y = (np.clip(y, -1, 1) + 1) / 2
        restored = (y.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)[:, :, ::-1]
        paste_back(frame, np.ascontiguousarray(restored), affine, self.mask)
