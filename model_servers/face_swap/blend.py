"""Putting a generated face back into the frame: soft masks, the mouth mask, colour transfer, paste-back.

Shared by both engines. Paste-back warps only the face's bounding region of the frame (not the
whole frame) so a 4K frame costs about what a 720p one does.
"""

from __future__ import annotations

import cv2
import numpy as np


def soft_box_mask(size: int, blur: float = 0.3) -> np.ndarray:
    """A box with feathered edges over a square crop (FaceFusion's static box mask)."""
    amount = int(size * 0.5 * blur)
    area = max(amount // 2, 1)
    mask = np.ones((size, size), np.float32)
    mask[:area, :] = 0
    mask[-area:, :] = 0
    mask[:, :area] = 0
    mask[:, -area:] = 0
    if amount > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), amount * 0.25)
    return mask


def mouth_keep_mask(shape: tuple[int, int], left: np.ndarray, right: np.ndarray, blur_px: float) -> np.ndarray:
    """1 where the target's own mouth should stay, feathered; corners in the mask's coordinates."""
    h, w = shape
    mask = np.zeros((h, w), np.float32)
    center = (left + right) / 2
    width = float(np.linalg.norm(right - left))
    angle = float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
    axes = (max(2, int(width * 0.75)), max(2, int(width * 0.45)))
    cv2.ellipse(mask, (int(round(center[0])), int(round(center[1]))), axes, angle, 0, 360, 1.0, -1)
    if blur_px > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur_px)
    return mask


def paste_back(frame: np.ndarray, crop: np.ndarray, affine: np.ndarray, mask: np.ndarray) -> None:
    """Blend ``crop`` (made from ``frame`` by ``affine``) back into ``frame`` in place through ``mask``."""
    h, w = frame.shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    ch, cw = crop.shape[:2]
    corners = np.array([[0, 0, 1], [cw, 0, 1], [0, ch, 1], [cw, ch, 1]], np.float32) @ inverse.T
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    roi = frame[y0:y1, x0:x1]
    roi[:] = (warped.astype(np.float32) * alpha + roi.astype(np.float32) * (1.0 - alpha) + 0.5).astype(np.uint8)


def match_colour(face: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``face``'s LAB mean and spread to ``reference``'s over ``mask`` (Reinhard transfer)."""
    inside = mask > 0
    if inside.sum() < 16:
        return face
    src = cv2.cvtColor(face, cv2.COLOR_BGR2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_BGR2LAB).astype(np.float32)
    for c in range(3):
        s, r = src[..., c][inside], ref[..., c][inside]
        scale = (r.std() + 1e-3) / (s.std() + 1e-3)
        src[..., c] = (src[..., c] - s.mean()) * min(scale, 3.0) + r.mean()
    return cv2.cvtColor(np.clip(src, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)
