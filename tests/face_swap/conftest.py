"""Fixtures for the face-swap tests: real photos from packages, tiny ONNX models, clips made by
ffmpeg, and real uvicorn servers on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

# With tests/ on sys.path (pytest's pythonpath), tests/storage would shadow the real storage package.
_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[0] != _ROOT:
    sys.path.insert(0, _ROOT)

import cv2  # noqa: E402
import numpy as np
import pytest

import face_swap_tiny
from face_swap_helpers import make_clip, settings_for
from model_servers.face_swap.media import find_tools
from support import LiveServer


@pytest.fixture(scope="session")
def tools():
    return find_tools()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real face photos shipped inside packages (public domain), as jpg and png files."""
    import matplotlib.cbook as cbook
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_COLOR)
    paths = {"astronaut": root / "astronaut.png", "hopper": root / "hopper.jpg"}
    cv2.imwrite(str(paths["astronaut"]), astronaut)
    cv2.imwrite(str(paths["hopper"]), hopper, [cv2.IMWRITE_JPEG_QUALITY, 95])
    # A photo with no face in it: a smooth colour gradient with some texture.
    sky = np.zeros((300, 400, 3), np.uint8)
    sky[..., 0] = np.linspace(120, 255, 400, dtype=np.uint8)[None, :]
    sky[..., 1] = np.linspace(60, 200, 300, dtype=np.uint8)[:, None]
    paths["noface"] = root / "noface.jpg"
    cv2.imwrite(str(paths["noface"]), sky)
    return paths


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    return face_swap_tiny.install(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def clips(tools, photos, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "audio": make_clip(tools, photos["hopper"], root / "audio.mp4", seconds=2, fps=25, audio=True),
        "silent": make_clip(tools, photos["hopper"], root / "silent.mp4", seconds=1.2, fps=24, audio=False),
        "long": make_clip(tools, photos["hopper"], root / "long.mp4", seconds=4, fps=10, size=64, audio=False),
    }


@pytest.fixture(scope="session")
def lite_server(tmp_path_factory):
    from model_servers.face_swap.app import create_app

    settings = settings_for(tmp_path_factory.mktemp("empty"), face_swap_engine="lite", max_video_s=3.0)
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="session")
def insight_server(tiny_models):
    from model_servers.face_swap.app import create_app

    with LiveServer(create_app(settings_for(tiny_models, max_input_mb=1))) as server:
        yield server
