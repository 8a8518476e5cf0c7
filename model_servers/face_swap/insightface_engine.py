"""The production engine: InsightFace buffalo_l (detection + recognition) and inswapper_128 (ONNX).

FaceFusion's call flow: the source face's identity embedding (largest face), projected through the
swapper's ``emap``; each target face aligned to the 128 px ArcFace template by its five keypoints,
swapped, and pasted back through a feathered mask (the target's mouth kept on request), then
optionally restored by GFPGAN. Nothing is downloaded here: missing files make the server unhealthy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_servers.face_swap.blend import mouth_keep_mask, paste_back, soft_box_mask
from model_servers.face_swap.errors import ModelNotInstalled, NoSourceFace
from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.errors import EngineUnavailable
from taskfleet.workflows.face_swap import FaceSwapOptions

SWAPPER_MODELS = ("inswapper_128_fp16", "inswapper_128")


def largest(boxes: list[np.ndarray] | np.ndarray) -> int:
    """Index of the box (x0, y0, x1, y1, ...) with the largest area."""
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return int(np.argmax(areas))


def select_providers(wanted: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    return chosen or ["CPUExecutionProvider"]


class Swapper:
    """One inswapper model: its session, the ``emap`` projection and the IO dtypes it wants."""

    def __init__(self, path: Path, providers: list[str]) -> None:
        from insightface.model_zoo import model_zoo

        model = model_zoo.get_model(str(path), providers=providers)
        if model is None or not hasattr(model, "emap"):
            raise EngineUnavailable(f"{path.name} is not an inswapper model (two inputs, 128x128 target)")
        self.session = model.session
        self.emap = np.asarray(model.emap, np.float32)
        target, source = self.session.get_inputs()
        self.names = (target.name, source.name)
        self.size = int(target.shape[2])
        # The fp16 export may keep fp16 inputs; feed what the graph declares.
        self.dtypes = tuple(np.float16 if i.type == "tensor(float16)" else np.float32 for i in (target, source))

    def latent(self, normed_embedding: np.ndarray) -> np.ndarray:
        latent = normed_embedding.reshape(1, -1).astype(np.float32) @ self.emap
        return latent / np.linalg.norm(latent)

    def run(self, aligned_bgr: np.ndarray, latent: np.ndarray) -> np.ndarray:
        blob = (aligned_bgr[:, :, ::-1].astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        pred = self.session.run(
            None, {self.names[0]: blob.astype(self.dtypes[0]), self.names[1]: latent.astype(self.dtypes[1])}
        )[0]
        face = np.clip(pred[0].astype(np.float32).transpose(1, 2, 0) * 255.0, 0, 255)
        return np.ascontiguousarray(face.astype(np.uint8)[:, :, ::-1])


class InsightFaceEngine:
    name = "insightface"

    def __init__(self, settings: FaceSwapSettings) -> None:
        self.settings = settings
        self.device = "cpu"
        self.analysis = None
        self.swappers: dict[str, Swapper] = {}
        self.enhancer = None

    def load(self) -> str:
        s = self.settings
        root = s.models_path()
        pack = root / "models" / s.face_swap_analysis
        if not pack.is_dir() or not any(pack.glob("*.onnx")):
            raise EngineUnavailable(
                f"face analysis models missing: no *.onnx in {pack} (run `taskfleet models download face_swap`)"
            )
        default = root / f"{s.face_swap_model}.onnx"
        if not default.is_file():
            raise EngineUnavailable(f"swapper model missing: {default} (run `taskfleet models download face_swap`)")
        providers = select_providers(s.provider_list())
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # insightface 0.7 pings PyPI on import otherwise
        try:
            from insightface.app import FaceAnalysis

            analysis = FaceAnalysis(
                name=s.face_swap_analysis,
                root=str(root),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
            analysis.prepare(
                ctx_id=0 if self.device == "cuda" else -1,
                det_thresh=s.face_swap_det_thresh,
                det_size=(s.face_swap_det_size, s.face_swap_det_size),
            )
        except (AssertionError, RuntimeError, ValueError, OSError) as exc:
            raise EngineUnavailable(f"cannot load {pack}: {exc or type(exc).__name__}") from None
        if "recognition" not in analysis.models:
            raise EngineUnavailable(f"{pack} has no recognition model (needed for the source identity)")
        if not getattr(analysis.det_model, "use_kps", False):
            raise EngineUnavailable(f"{pack}'s detector gives no keypoints (needed to align faces)")
        self.analysis = analysis
        for name in SWAPPER_MODELS:
            path = root / f"{name}.onnx"
            if path.is_file():
                try:
                    self.swappers[name] = Swapper(path, providers)
                except EngineUnavailable:
                    if name == s.face_swap_model:
                        raise
        enhancer_path = root / s.face_swap_enhancer
        notes = []
        if enhancer_path.is_file():
            from model_servers.face_swap.enhancer import FaceEnhancer

            try:
                self.enhancer = FaceEnhancer(enhancer_path, providers)
            except (ValueError, RuntimeError, OSError) as exc:
                notes.append(f"enhancer not loaded: {exc}")
        else:
            notes.append(f"no enhancer ({enhancer_path.name} missing)")
        return "; ".join([f"insightface ready on {self.device}: {', '.join(sorted(self.swappers))}", *notes])

    def start(self, source: np.ndarray, options: FaceSwapOptions, *, video: bool) -> "InsightFaceSwapper":
        name = options.model or self.settings.face_swap_model
        swapper = self.swappers.get(name)
        if swapper is None:
            raise ModelNotInstalled(f"swapper {name!r} is not installed on this server")
        if options.face_enhancer and self.enhancer is None:
            raise ModelNotInstalled(f"face enhancer {self.settings.face_swap_enhancer!r} is not installed on this server")
        assert self.analysis is not None
        faces = self.analysis.get(source)
        if not faces:
            raise NoSourceFace("no face found in the source image")
        face = faces[largest([f.bbox for f in faces])]
        return InsightFaceSwapper(
            detector=self.analysis.det_model,
            swapper=swapper,
            latent=swapper.latent(face.normed_embedding),
            options=options,
            enhancer=self.enhancer if options.face_enhancer else None,
        )


class InsightFaceSwapper:
    parallel = True  # no state between frames; ONNX Runtime sessions take concurrent runs

    def __init__(self, *, detector, swapper: Swapper, latent: np.ndarray, options: FaceSwapOptions, enhancer) -> None:
        self.detector = detector
        self.swapper = swapper
        self.latent = latent
        self.many = options.many_faces
        self.mouth = options.mouth_mask
        self.enhancer = enhancer
        self.enhanced = enhancer is not None
        self.mask = soft_box_mask(swapper.size, 0.3)

    def swap(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        from insightface.utils import face_align

        # Targets need keypoints only: running recognition on them (FaceAnalysis.get) would waste time.
        boxes, kpss = self.detector.detect(frame, max_num=0)
        if boxes.shape[0] == 0:
            return frame, 0
        order = np.argsort([-(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]) if self.many else [largest(boxes)]
        for i in order:
            kps = kpss[i]
            aligned, affine = face_align.norm_crop2(frame, kps, self.swapper.size)
            fake = self.swapper.run(aligned, self.latent)
            mask = self.mask
            if self.mouth:
                corners = kps[3:5] @ affine[:, :2].T + affine[:, 2]
                mask = mask * (1.0 - mouth_keep_mask(mask.shape, corners[0], corners[1], self.swapper.size * 0.03))
            paste_back(frame, fake, affine, mask)
            if self.enhancer is not None:
                self.enhancer.enhance(frame, kps)
        return frame, len(order)
