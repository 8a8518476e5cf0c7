"""Tiny ONNX models with the real signatures of buffalo_l's detector and recognizer, inswapper_128
(fp32 and fp16 IO) and GFPGAN 1.4, so the whole InsightFace path runs on CPU in CI.

They prove the plumbing, not quality. The "detector" sees a face wherever a 32x32 cell (stride 32)
is bright; brighter cells give bigger boxes, so "largest face" is testable. Faces in test images
are therefore bright squares aligned to the 32 px grid of a 640x640 canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="taskfleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def detector(path: Path) -> Path:
    """SCRFD-like: 9 outputs (scores, boxes, keypoints for strides 8/16/32, 2 anchors)."""
    nodes, inits = [], []
    inits += [
        _const("zero", 0.0),
        _const("gain", 10.0),
        _const("bias", 0.3),
        _const("box_a", [[0.5, 0.5, 1.0, 1.0]]),
        _const("box_b", [[0.5, 0.5, 1.0, 1.0]]),
        # keypoints relative to the cell's corner, in stride units: eyes, nose, mouth corners
        _const("kps", [[0.2, 0.25, 0.8, 0.25, 0.5, 0.5, 0.25, 0.8, 0.75, 0.8]]),
        _const("zeros4", np.zeros((1, 4))),
        _const("zeros10", np.zeros((1, 10))),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "flat_shape"),
    ]
    scores, boxes, kpss = [], [], []
    for s in (8, 16, 32):
        p = f"s{s}_"
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [p + "pool"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("ReduceMean", [p + "pool"], [p + "lum"], axes=[1], keepdims=1),
            helper.make_node("Reshape", [p + "lum", "flat_shape"], [p + "lum1"]),
            helper.make_node("Concat", [p + "lum1", p + "lum1"], [p + "lum2"], axis=1),
            helper.make_node("Reshape", [p + "lum2", "flat_shape"], [p + "lumf"]),
            helper.make_node("Sub", [p + "lumf", "bias"], [p + "centred"]),
            helper.make_node("Mul", [p + "centred", "gain"], [p + "logit"]),
            helper.make_node("Sigmoid", [p + "logit"], [p + "sig"]),
        ]
        if s == 32:
            nodes.append(helper.make_node("Identity", [p + "sig"], [f"score_{s}"]))
        else:  # only the coarsest level "sees" faces, so each bright cell gives one detection
            nodes.append(helper.make_node("Mul", [p + "sig", "zero"], [f"score_{s}"]))
        nodes += [
            helper.make_node("Mul", [p + "lumf", "box_a"], [p + "boxa"]),
            helper.make_node("Add", [p + "boxa", "box_b"], [f"bbox_{s}"]),
            helper.make_node("Mul", [p + "lumf", "zeros10"], [p + "k0"]),
            helper.make_node("Add", [p + "k0", "kps"], [f"kps_{s}"]),
        ]
        scores.append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, ["n", 1]))
        boxes.append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, ["n", 4]))
        kpss.append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, ["n", 10]))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    return _save(helper.make_graph(nodes, "tiny_scrfd", [inp], scores + boxes + kpss, inits), path)


def recognizer(path: Path) -> Path:
    """ArcFace-like: [N,3,112,112] -> [N,512]; the embedding follows the crop's mean colour."""
    rng = np.random.default_rng(1)
    inits = [_const("w", rng.normal(size=(3, 512))), _const("b", rng.normal(scale=0.1, size=(512,)))]
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["fc1"]),
    ]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])
    return _save(helper.make_graph(nodes, "tiny_arcface", [inp], [out], inits), path)


def swapper(path: Path, *, fp16_io: bool = False) -> Path:
    """inswapper-like: target [1,3,128,128] + source [1,512] -> [1,3,128,128]; ``emap`` last."""
    rng = np.random.default_rng(2)
    dtype = TensorProto.FLOAT16 if fp16_io else TensorProto.FLOAT
    inits = [
        _const("proj", rng.normal(scale=0.5, size=(512, 3))),
        _const("keep", 0.3),
        _const("offset", 0.35),
        numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "colour_shape"),
        _const("emap", np.eye(512)),  # must be the LAST initializer (INSwapper reads it by position)
    ]
    nodes = []
    target, source = "target", "source"
    if fp16_io:
        nodes += [
            helper.make_node("Cast", ["target"], ["target32"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["source"], ["source32"], to=TensorProto.FLOAT),
        ]
        target, source = "target32", "source32"
    nodes += [
        helper.make_node("MatMul", [source, "proj"], ["colour"]),
        helper.make_node("Sigmoid", ["colour"], ["colour01"]),
        helper.make_node("Reshape", ["colour01", "colour_shape"], ["colour4"]),
        helper.make_node("Mul", [target, "keep"], ["kept"]),
        helper.make_node("Add", ["kept", "colour4"], ["mixed"]),
        helper.make_node("Mul", ["mixed", "offset"], ["out32"] if fp16_io else ["output"]),
    ]
    if fp16_io:
        nodes.append(helper.make_node("Cast", ["out32"], ["output"], to=TensorProto.FLOAT16))
    ins = [
        helper.make_tensor_value_info("target", dtype, [1, 3, 128, 128]),
        helper.make_tensor_value_info("source", dtype, [1, 512]),
    ]
    out = helper.make_tensor_value_info("output", dtype, [1, 3, 128, 128])
    return _save(helper.make_graph(nodes, "tiny_inswapper", ins, [out], inits), path)


def enhancer(path: Path) -> Path:
    """GFPGAN-like: [1,3,512,512] in [-1,1] -> same; brightens, so its work is visible."""
    inits = [_const("scale", 0.6), _const("lift", 0.35)]
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "lift"], ["output"]),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])
    return _save(helper.make_graph(nodes, "tiny_gfpgan", [inp], [out], inits), path)


def install(models_dir: Path, *, with_enhancer: bool = True) -> Path:
    """Lay the tiny models out the way the server expects real ones."""
    pack = models_dir / "models" / "buffalo_l"
    detector(pack / "det_10g.onnx")
    recognizer(pack / "w600k_r50.onnx")
    swapper(models_dir / "inswapper_128_fp16.onnx", fp16_io=True)
    swapper(models_dir / "inswapper_128.onnx")
    if with_enhancer:
        enhancer(models_dir / "gfpgan_1.4.onnx")
    return models_dir


def face_canvas(faces: list[tuple[int, int, tuple[int, int, int]]], size: int = 640) -> np.ndarray:
    """A dark BGR canvas with bright 32x32 "faces" at grid cells (col, row) in the given colours."""
    img = np.full((size, size, 3), 20, np.uint8)
    # Texture so that paste-back changes are measurable against a non-flat background.
    img[::4, :, :] = 28
    for col, row, colour in faces:
        img[row * 32 : row * 32 + 32, col * 32 : col * 32 + 32] = colour
    return img
