"""Both engines on frames: the insightface path on tiny models, the lite engine on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import face_swap_tiny
from face_swap_helpers import settings_for
from model_servers.face_swap.errors import ModelNotInstalled, NoSourceFace
from model_servers.face_swap.insightface_engine import InsightFaceEngine
from model_servers.face_swap.lite_engine import IMAGE_DETECT_SIDE, LiteEngine, _cascade, detect_faces
from taskfleet.errors import EngineUnavailable
from taskfleet.workflows.face_swap import FaceSwapOptions

SOURCE = face_swap_tiny.face_canvas([(8, 8, (230, 200, 180))])
# Two target "faces": the brighter one is the larger for the tiny detector.
TARGET = face_swap_tiny.face_canvas([(4, 4, (245, 245, 245)), (14, 12, (205, 205, 205))])


@pytest.fixture(scope="module")
def engine(tiny_models):
    eng = InsightFaceEngine(settings_for(tiny_models))
    message = eng.load()
    assert "inswapper_128_fp16" in message and "inswapper_128" in message
    return eng


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 0


def region(mask: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> int:
    return int(mask[y0:y1, x0:x1].sum())


def test_insightface_path_detect_embed_swap_paste_back(engine):
    out, n = engine.start(SOURCE, FaceSwapOptions(), video=False).swap(TARGET.copy())
    assert n == 1
    diff = changed(out, TARGET)
    # Only the larger face (cell 4,4 -> pixels 128..160) changed; around it a feathered margin.
    assert region(diff, 128, 128, 160, 160) > 0.9 * 32 * 32
    assert region(diff, 14 * 32, 12 * 32, 15 * 32, 13 * 32) == 0
    ys, xs = np.nonzero(diff)
    assert xs.min() >= 64 and xs.max() < 240 and ys.min() >= 64 and ys.max() < 240
    # The swapped-in colour depends on the source identity: another source gives another face.
    other = face_swap_tiny.face_canvas([(8, 8, (170, 250, 200))])
    out2, _ = engine.start(other, FaceSwapOptions(), video=False).swap(TARGET.copy())
    assert np.abs(out2[130:158, 130:158].astype(int) - out[130:158, 130:158]).mean() > 2


def test_many_faces_swaps_every_face(engine):
    out, n = engine.start(SOURCE, FaceSwapOptions(many_faces=True), video=False).swap(TARGET.copy())
    assert n == 2
    diff = changed(out, TARGET)
    assert region(diff, 128, 128, 160, 160) > 0.9 * 32 * 32
    assert region(diff, 14 * 32, 12 * 32, 15 * 32, 13 * 32) > 0.9 * 32 * 32


def test_enhancer_runs_on_swapped_faces_only(engine):
    plain, _ = engine.start(SOURCE, FaceSwapOptions(), video=False).swap(TARGET.copy())
    enhanced, _ = engine.start(SOURCE, FaceSwapOptions(face_enhancer=True), video=False).swap(TARGET.copy())
    assert changed(enhanced, plain)[128:160, 128:160].mean() > 0.9  # the tiny GFPGAN brightens
    # The face that was not swapped is not enhanced either.
    assert region(changed(enhanced, TARGET), 14 * 32, 12 * 32, 15 * 32, 13 * 32) == 0


def test_mouth_mask_keeps_the_target_mouth(engine):
    boxes, kpss = engine.analysis.det_model.detect(TARGET, max_num=0)
    big = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    mx, my = np.round(kpss[big][3:5].mean(axis=0)).astype(int)
    plain, _ = engine.start(SOURCE, FaceSwapOptions(), video=False).swap(TARGET.copy())
    kept, _ = engine.start(SOURCE, FaceSwapOptions(mouth_mask=True), video=False).swap(TARGET.copy())
    original = TARGET[my - 2 : my + 3, mx - 2 : mx + 3].astype(int)
    assert np.abs(plain[my - 2 : my + 3, mx - 2 : mx + 3] - original).mean() > 10
    assert np.abs(kept[my - 2 : my + 3, mx - 2 : mx + 3] - original).mean() < 3
    # Away from the mouth, the face is swapped just the same.
    assert np.array_equal(kept[130:136, 130:158], plain[130:136, 130:158])


def test_fp16_and_fp32_swappers_both_run(engine):
    a, _ = engine.start(SOURCE, FaceSwapOptions(model="inswapper_128_fp16"), video=False).swap(TARGET.copy())
    b, _ = engine.start(SOURCE, FaceSwapOptions(model="inswapper_128"), video=False).swap(TARGET.copy())
    assert engine.swappers["inswapper_128_fp16"].dtypes[0] == np.float16
    assert np.abs(a.astype(int) - b).max() <= 3  # same tiny graph, fp16 rounding only
    assert changed(a, TARGET).any()


def test_no_source_face(engine):
    with pytest.raises(NoSourceFace) as info:
        engine.start(face_swap_tiny.face_canvas([]), FaceSwapOptions(), video=False)
    assert info.value.code == "no_source_face" and info.value.retryable is False


def test_missing_models_explain_themselves(tmp_path, tiny_models):
    with pytest.raises(EngineUnavailable, match="face analysis models missing"):
        InsightFaceEngine(settings_for(tmp_path)).load()
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    face_swap_tiny.detector(tmp_path / "models" / "buffalo_l" / "det.onnx")
    face_swap_tiny.recognizer(tmp_path / "models" / "buffalo_l" / "rec.onnx")
    with pytest.raises(EngineUnavailable, match="swapper model missing"):
        InsightFaceEngine(settings_for(tmp_path)).load()
    face_swap_tiny.swapper(tmp_path / "inswapper_128_fp16.onnx")
    eng = InsightFaceEngine(settings_for(tmp_path))
    assert "no enhancer" in eng.load()
    with pytest.raises(ModelNotInstalled):
        eng.start(SOURCE, FaceSwapOptions(face_enhancer=True), video=False)
    with pytest.raises(ModelNotInstalled):
        eng.start(SOURCE, FaceSwapOptions(model="inswapper_128"), video=False)


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    eng = LiteEngine(settings_for(tmp_path_factory.mktemp("none"), face_swap_engine="lite"))
    eng.load()
    return eng


@pytest.mark.parametrize("source_name,target_name", [("hopper", "astronaut"), ("astronaut", "hopper")])
def test_lite_swaps_real_faces_and_leaves_the_rest(lite, photos, source_name, target_name):
    source = cv2.imread(str(photos[source_name]))
    target = cv2.imread(str(photos[target_name]))
    (x, y, w, h), *_ = detect_faces(_cascade(), target, IMAGE_DETECT_SIDE)
    out, n = lite.start(source, FaceSwapOptions(), video=False).swap(target.copy())
    assert n == 1
    diff = changed(out, target)
    inside = diff[y : y + h, x : x + w]
    assert inside.mean() > 0.4  # most of the face box is new
    outside = diff.copy()
    outside[y : y + h, x : x + w] = False
    assert not outside.any()  # not one pixel outside the face box
    face_change = np.abs(out[y : y + h, x : x + w].astype(int) - target[y : y + h, x : x + w]).mean()
    assert face_change > 8  # visibly another face, not a rounding-level change


def test_lite_without_a_face_in_the_source(lite, photos):
    with pytest.raises(NoSourceFace):
        lite.start(cv2.imread(str(photos["noface"])), FaceSwapOptions(), video=False)


def test_lite_eye_alignment(photos):
    from model_servers.face_swap.lite_engine import eye_transform, find_eyes

    for name in ("astronaut", "hopper"):
        img = cv2.imread(str(photos[name]))
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        (x, y, w, h), *_ = detect_faces(_cascade(), img, IMAGE_DETECT_SIDE)
        eyes = find_eyes(grey, (x, y, w, h))
        assert eyes is not None
        (lx, ly), (rx, ry) = eyes
        assert x < lx < x + w / 2 < rx < x + w and y + 0.2 * h < ly < y + 0.6 * h and abs(ly - ry) < 0.1 * h
    # A flat patch has no eyes worth trusting: the box alone aligns then.
    assert find_eyes(np.full((200, 200), 128, np.uint8), (20, 20, 150, 150)) is None
    src = np.array([[10, 20], [50, 20]], np.float32)
    dst = np.array([[100, 100], [100, 180]], np.float32)  # rotated 90 degrees, twice the size
    m = eye_transform(src, dst)
    assert np.allclose(src @ m[:, :2].T + m[:, 2], dst, atol=1e-4)


def test_only_allocation_failures_of_onnx_runtime_count_as_out_of_memory():
    from face_swap_helpers import oversized_session
    from model_servers.base import is_out_of_memory

    session = oversized_session()
    with pytest.raises(Exception) as oom:
        session.run(None, {"shape": np.array([1 << 58], np.int64)})
    with pytest.raises(Exception) as bad_input:  # ORT's error for an input the model does not have
        session.run(None, {"size": np.array([1], np.int64)})
    assert is_out_of_memory(oom.value)
    assert not is_out_of_memory(bad_input.value)
    assert not is_out_of_memory(RuntimeError("Failed to allocate memory"))  # not from ORT
