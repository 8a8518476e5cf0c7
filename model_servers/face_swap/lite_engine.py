"""The offline CPU engine: a real but simple face swap that needs no downloaded weights.

Faces are found by scikit-image's LBP frontal-face cascade (shipped inside the scikit-image wheel,
so it works with any OpenCV, including 5.x which dropped its Haar cascades). The source face is
scaled onto each target box, its colours moved to the target's (LAB transfer), and Poisson-blended
in (``cv2.seamlessClone``) through an elliptical mask, so lighting and skin tone follow the target.

What to expect: frontal faces only; alignment is by the detection box (no landmarks), so eyes and
mouth can sit a few pixels off and head pose is not followed; hair, glasses and beard of the source
come along only where they fall inside the ellipse. It is for demos and CI, not production.
"""

from __future__ import annotations

import cv2
import numpy as np

from model_servers.face_swap.blend import match_colour
from model_servers.face_swap.errors import NoSourceFace
from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.errors import EngineUnavailable
from taskfleet.workflows.face_swap import FaceSwapOptions

IMAGE_DETECT_SIDE = 512  # detection runs on a downscaled grey copy; bigger finds smaller faces
VIDEO_DETECT_SIDE = 400
VIDEO_DETECT_EVERY = 3  # frames between detections in a video; boxes are carried over in between
VIDEO_FULL_EVERY = 30  # between full-frame scans a video is searched only around the known faces
TRACK_SIDE = 96  # a known face is re-found at about this size, in a window around its last box


def _cascade():
    from skimage import data
    from skimage.feature import Cascade

    return Cascade(data.lbp_frontal_face_cascade_filename())


def detect_faces(
    cascade, image: np.ndarray, max_side: int, *, scale: float | None = None, sizes: tuple[int, int] | None = None
) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in ``image`` coordinates, largest first.

    ``scale`` resizes the image before the scan (default: longest side to ``max_side``); ``sizes``
    bounds the face side in scanned pixels. Fewer scales make the scan much faster.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if scale is None:
        scale = min(1.0, max_side / max(grey.shape))
    if scale != 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    lo, hi = sizes or (24, min(grey.shape))
    lo, hi = max(20, lo), min(hi, min(grey.shape))
    if hi < lo:
        return []
    found = cascade.detect_multi_scale(
        img=grey,
        scale_factor=1.15,
        step_ratio=1,
        min_size=(lo, lo),
        max_size=(hi, hi),
        min_neighbor_number=8,  # 4 (the default) finds patches of the astronaut's suit
    )
    boxes = [
        (int(d["c"] / scale), int(d["r"] / scale), int(d["width"] / scale), int(d["height"] / scale)) for d in found
    ]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def find_eyes(grey: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """Eye centres (left, right) in image coordinates, or None when the guess looks implausible."""
    x, y, w, h = box
    face = grey[max(y, 0) : y + h, max(x, 0) : x + w]
    if face.shape[0] < 16 or face.shape[1] < 16:
        return None
    face = cv2.GaussianBlur(face.astype(np.float32), (0, 0), max(1.0, w / 30))
    top, bottom = int(0.25 * h), int(0.55 * h)
    eyes = []
    for x0, x1 in ((0.15, 0.5), (0.5, 0.85)):
        band = face[top:bottom, int(x0 * w) : int(x1 * w)]
        if band.size == 0:
            return None
        darkest, _, spot, _ = cv2.minMaxLoc(band)
        if float(np.median(band)) - darkest < 8:  # no dark spot stands out: not an eye
            return None
        eyes.append((max(x, 0) + int(x0 * w) + spot[0], max(y, 0) + top + spot[1]))
    eyes_arr = np.array(eyes, np.float32)
    dx, dy = eyes_arr[1] - eyes_arr[0]
    # Eyes sit roughly level and a third to a half of the face width apart; anything else is a
    # shadow, an eyebrow or a frame of glasses, and the box alone aligns better.
    if not (0.25 * w <= dx <= 0.6 * w) or abs(dy) > 0.2 * dx:
        return None
    return eyes_arr


def eye_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform (2x3) taking the eye pair ``src`` onto ``dst``."""
    sv, dv = src[1] - src[0], dst[1] - dst[0]
    scale = float(np.linalg.norm(dv) / max(np.linalg.norm(sv), 1e-6))
    angle = float(np.arctan2(dv[1], dv[0]) - np.arctan2(sv[1], sv[0]))
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]], np.float32)
    shift = dst[0] - rot @ src[0]
    return np.hstack([rot, shift[:, None]]).astype(np.float32)


def face_ellipse(w: int, h: int, mouth: bool) -> np.ndarray:
    """Where the source face replaces the target's: an ellipse over eyes, nose and mouth."""
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, int(h * 0.55)), (max(1, int(w * 0.36)), max(1, int(h * 0.43))), 0, 0, 360, 255, -1)
    if mouth:  # keep the target's own mouth: cut it out of the clone region
        cv2.ellipse(mask, (w // 2, int(h * 0.8)), (max(1, int(w * 0.17)), max(1, int(h * 0.08))), 0, 0, 360, 0, -1)
    return mask


def _iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0, min(ax1, bx1) - max(a[0], b[0])), max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter + 1e-6)


class LiteEngine:
    name = "lite"
    device = "cpu"

    def __init__(self, settings: FaceSwapSettings) -> None:
        self.settings = settings

    def load(self) -> str:
        try:
            _cascade()
        except Exception as exc:  # an import or file error: the reason is what the operator needs
            raise EngineUnavailable(f"lite engine cannot load scikit-image's face cascade: {exc}") from None
        if not hasattr(cv2, "seamlessClone"):
            raise EngineUnavailable("this OpenCV build has no seamlessClone")
        return "lite engine ready (CPU; LBP cascade + Poisson blend; set TASKFLEET_FACE_SWAP_ENGINE=insightface for quality)"

    def start(self, source: np.ndarray, options: FaceSwapOptions, *, video: bool) -> "LiteSwapper":
        cascade = _cascade()  # one per job: the cascade's scratch state is not shared across threads
        boxes = detect_faces(cascade, source, IMAGE_DETECT_SIDE)
        if not boxes:
            raise NoSourceFace("no face found in the source image")
        box = boxes[0]
        eyes = find_eyes(cv2.cvtColor(source, cv2.COLOR_BGR2GRAY), box)
        return LiteSwapper(cascade, source, box, eyes, options, video=video)


class LiteSwapper:
    enhanced = False  # GFPGAN needs landmarks this engine does not have
    parallel = False  # carries face boxes from frame to frame

    def __init__(
        self, cascade, source: np.ndarray, box, eyes: np.ndarray | None, options: FaceSwapOptions, *, video: bool
    ) -> None:
        self.cascade = cascade
        self.source = source
        x, y, w, h = box
        self.source_face = source[y : y + h, x : x + w].copy()
        self.source_eyes = eyes
        self.many = options.many_faces
        self.mouth = options.mouth_mask
        self.video = video
        self.frame_index = 0
        self.boxes: list[tuple[int, int, int, int]] = []

    def _targets(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        if not self.video:
            return detect_faces(self.cascade, frame, IMAGE_DETECT_SIDE)
        if self.frame_index % VIDEO_DETECT_EVERY == 0:
            if self.boxes and self.frame_index % VIDEO_FULL_EVERY != 0:
                found = self._track(frame)
            else:
                found = detect_faces(self.cascade, frame, VIDEO_DETECT_SIDE)
            # Steady the boxes between detections: a matched box moves only part of the way.
            steadied = []
            for box in found:
                prev = max(self.boxes, key=lambda p: _iou(p, box), default=None)
                if prev is not None and _iou(prev, box) > 0.3:
                    box = tuple(int(round(0.6 * n + 0.4 * p)) for n, p in zip(box, prev))
                steadied.append(box)
            self.boxes = steadied
        self.frame_index += 1
        return self.boxes

    def _track(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Re-find each known face in a window around its last box, at a small fixed scale."""
        fh, fw = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        found = []
        for x, y, w, h in self.boxes:
            m = w // 2
            x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(fw, x + w + m), min(fh, y + h + m)
            scale = min(1.0, TRACK_SIDE / max(w, 1))
            hits = detect_faces(
                self.cascade, grey[y0:y1, x0:x1], 0, scale=scale, sizes=(int(w * scale * 0.7), int(w * scale * 1.4) + 1)
            )
            if hits:
                bx, by, bw, bh = hits[0]
                found.append((bx + x0, by + y0, bw, bh))
            else:
                found.append((x, y, w, h))  # a missed scan keeps the face; the next full scan corrects it
        return sorted(found, key=lambda b: -b[2] * b[3])

    def swap(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        targets = self._targets(frame)
        if not self.many:
            targets = targets[:1]
        done = 0
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if targets and self.source_eyes is not None else None
        for box in targets:
            if self._swap_one(frame, box, grey):
                done += 1
        return frame, done

    def _source_patch(self, box, grey: np.ndarray | None) -> np.ndarray:
        """The source face as a ``w x h`` patch over the target box: eye-aligned when both eye pairs are known."""
        x, y, w, h = box
        target_eyes = find_eyes(grey, box) if grey is not None else None
        if self.source_eyes is not None and target_eyes is not None:
            affine = eye_transform(self.source_eyes, target_eyes - np.array([x, y], np.float32))
            return cv2.warpAffine(self.source, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        small = w < self.source_face.shape[1]
        return cv2.resize(self.source_face, (w, h), interpolation=cv2.INTER_AREA if small else cv2.INTER_CUBIC)

    def _swap_one(self, frame: np.ndarray, box: tuple[int, int, int, int], grey: np.ndarray | None) -> bool:
        fh, fw = frame.shape[:2]
        x, y, w, h = box
        # Clip to the frame (seamlessClone needs its region inside the destination) with a 1 px margin.
        x0, y0, x1, y1 = max(x, 1), max(y, 1), min(x + w, fw - 1), min(y + h, fh - 1)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return False
        face = self._source_patch(box, grey)
        mask = face_ellipse(w, h, self.mouth)
        sx, sy = x0 - x, y0 - y
        face = face[sy : sy + (y1 - y0), sx : sx + (x1 - x0)]
        mask = np.ascontiguousarray(mask[sy : sy + (y1 - y0), sx : sx + (x1 - x0)])
        target = frame[y0:y1, x0:x1]
        face = match_colour(face, target, mask)
        bx, by, bw, bh = cv2.boundingRect(mask)
        if bw < 4 or bh < 4:
            return False
        # seamlessClone places the mask's bounding box centred on this point.
        centre = (x0 + bx + bw // 2, y0 + by + bh // 2)
        try:
            frame[:] = cv2.seamlessClone(np.ascontiguousarray(face), frame, mask, centre, cv2.NORMAL_CLONE)
        except cv2.error:
            return False
        return True
