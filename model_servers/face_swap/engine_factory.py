"""The face-swap engine chosen by settings (``TASKFLEET_FACE_SWAP_ENGINE``).

Kept apart from ``engine.py``: the interface imports no engine, and only this module imports them.
"""

from __future__ import annotations

from model_servers.face_swap.engine import Engine
from model_servers.face_swap.settings import FaceSwapSettings


def build_engine(settings: FaceSwapSettings) -> Engine:
    if settings.face_swap_engine == "lite":
        from model_servers.face_swap.lite_engine import LiteEngine

        return LiteEngine(settings)
    from model_servers.face_swap.insightface_engine import InsightFaceEngine

    return InsightFaceEngine(settings)
