"""The face_swap processor against a real lite server, real local storage and the real input fetcher."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consumer.context import TaskContext
from consumer.inputs import InputFetcher
from consumer.model_client import ModelServerPool
from consumer.processors.face_swap import _drain, _ResultStream, process
from storage import open_storage
from taskfleet.errors import TaskfleetError
from taskfleet.urlguard import UrlGuard
from taskfleet.workflows import WorkflowRegistry
from taskfleet.workflows.face_swap import FACE_SWAP, FaceSwapResponse


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"file://{tmp_path}/store", public_base_url="http://files.test")


async def make_ctx(tmp_path, storage, server_url, data, progress, cancel=lambda: False):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    pool = ModelServerPool("face_swap", [server_url])
    fetcher = InputFetcher(UrlGuard(), 1 << 30)

    async def on_progress():
        progress.append((ctx._progress.percent, ctx._progress.message))

    ctx = TaskContext(
        task_id="tsk_fs1",
        workflow="face_swap",
        input=FACE_SWAP.validate_input(data),
        attempt=1,
        workdir=work,
        storage=storage,
        timeout_s=120,
        model_server_kind="face_swap",
        _fetcher=fetcher,
        _pools={"face_swap": pool.client(120)},
        _on_progress=on_progress,
        _cancel_requested=cancel,
    )
    return ctx, pool, fetcher


async def run(tmp_path, storage, url, data):
    progress = []
    ctx, pool, fetcher = await make_ctx(tmp_path, storage, url, data, progress)
    try:
        return await process(ctx), progress
    finally:
        await pool.aclose()
        await fetcher.aclose()


async def test_video_result_has_the_seed_shape_and_outputs_in_storage(tmp_path, storage, lite_server, photos, clips):
    source = await storage.put_file("inputs/astronaut.png", photos["astronaut"])
    target = await storage.put_file("inputs/clip.mp4", clips["audio"])
    out, progress = await run(
        tmp_path, storage, lite_server.url,
        {"source_url": source.url, "target_url": target.storage_url, "output_formats": ["mp4", "gif", "webp"]},
    )  # fmt: skip
    FaceSwapResponse.model_validate(out)
    assert out["status"] == "success" and out["job_id"] == "tsk_fs1" and out["processing_time"] > 0
    meta = out["metadata"]
    assert out["output_path"] == "http://files.test/files/" + storage.output_key("face_swap", "tsk_fs1", "output.mp4")
    assert meta["storage_provider"] == "local" and meta["storage_url"].startswith("file://")
    assert meta["gif_url"].endswith("/preview.gif") and meta["webp_url"].endswith("/preview.webp")
    assert meta["frames_processed"] == 50 and meta["fps"] == 25 and meta["faces_detected"] == 1
    assert meta["duration_seconds"] == 2.0
    for name in ("output.mp4", "preview.gif", "preview.webp"):
        assert await storage.exists(storage.output_key("face_swap", "tsk_fs1", name))
    percents = [p for p, _ in progress]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any("frames" in m for _, m in progress)  # the server's per-frame progress came through


async def test_image_result(tmp_path, storage, lite_server, photos):
    source = await storage.put_file("inputs/hopper.jpg", photos["hopper"])
    target = await storage.put_file("inputs/astronaut.png", photos["astronaut"])
    out, _ = await run(tmp_path, storage, lite_server.url, {"source_url": source.storage_url, "target_url": target.storage_url})
    assert out["output_path"].endswith("/output.png")
    assert out["metadata"]["faces_detected"] == 1 and out["metadata"]["frames_processed"] == 1


async def test_image_result_in_jpg_gif_and_webp_has_the_seed_urls(tmp_path, storage, lite_server, photos):
    source = await storage.put_file("inputs/hopper.jpg", photos["hopper"])
    target = await storage.put_file("inputs/astronaut.png", photos["astronaut"])
    data = {"source_url": source.storage_url, "target_url": target.storage_url, "output_formats": ["jpg", "gif", "webp"]}
    out, _ = await run(tmp_path, storage, lite_server.url, data)
    meta = out["metadata"]
    assert out["output_path"].endswith("/output.jpg")
    assert meta["gif_url"].endswith("/output.gif") and meta["webp_url"].endswith("/output.webp")
    key = storage.output_key("face_swap", "tsk_fs1", "output.gif")
    assert (await storage.get_bytes(key))[:3] == b"GIF"


async def test_no_face_fails_for_good(tmp_path, storage, lite_server, photos):
    source = await storage.put_file("inputs/noface.jpg", photos["noface"])
    target = await storage.put_file("inputs/astronaut.png", photos["astronaut"])
    with pytest.raises(TaskfleetError) as info:
        await run(tmp_path, storage, lite_server.url, {"source_url": source.storage_url, "target_url": target.storage_url})
    assert info.value.code == "no_source_face" and info.value.retryable is False


async def test_an_error_part_mid_stream_becomes_the_task_error(tmp_path):
    stream = _ResultStream(tmp_path)
    stream.events.append(
        ("error", {"error": {"code": "invalid_media", "message": "truncated"}, "retryable": False, "compute_s": 1.5})
    )

    class Ctx:
        reported: list = []

        async def progress(self, *a):
            pass

        def report_compute_s(self, seconds):
            self.reported.append(seconds)

    ctx = Ctx()
    with pytest.raises(TaskfleetError) as info:
        await _drain(ctx, stream)
    assert info.value.code == "invalid_media" and info.value.retryable is False
    assert ctx.reported == [1.5]  # the failed attempt's slot seconds still count


def test_workflow_is_registered_with_its_route_and_server():
    wf = WorkflowRegistry.from_entry_points().by_alias("face-swap")
    assert wf.name == "face_swap" and wf.model_server == "face_swap"
    ok = wf.validate_input({"source_url": "https://a/s.jpg", "target_url": "https://a/t.mp4", "resolution": "1280x720"})
    assert ok["resolution"] == "1280x720" and ok["keep_audio"] is True
    for bad in ({"source_url": "x"}, {"source_url": "a", "target_url": "b", "output_formats": ["bmp"]},
                {"source_url": "a", "target_url": "b", "resolution": "big"}):  # fmt: skip
        with pytest.raises(TaskfleetError):
            wf.validate_input(bad)


def test_the_fleet_side_imports_no_onnx_or_opencv():
    code = (
        "import sys; import consumer.processors.face_swap, taskfleet.workflows.face_swap; "
        "bad = [m for m in ('cv2', 'onnxruntime', 'insightface', 'numpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_cancel_stops_the_server_side_job(tmp_path, storage, photos, clips):
    import asyncio

    import httpx

    from consumer.errors import TaskCancelled
    from face_swap_helpers import GateEngine, settings_for
    from model_servers.face_swap.app import create_app
    from support import LiveServer

    engine = GateEngine(frame_s=0.05)  # 50 frames: 2.5 s if nobody stops it
    settings = settings_for(tmp_path / "models", progress_every_frames=2, batch_frames=2)
    source = await storage.put_file("inputs/a.png", photos["astronaut"])
    target = await storage.put_file("inputs/clip.mp4", clips["audio"])
    progress = []
    with LiveServer(create_app(settings, engine=engine)) as server:
        ctx, pool, fetcher = await make_ctx(
            tmp_path, storage, server.url, {"source_url": source.storage_url, "target_url": target.storage_url},
            progress, cancel=lambda: engine.frames >= 4,
        )  # fmt: skip
        try:
            with pytest.raises(TaskCancelled):
                await process(ctx)
        finally:
            await pool.aclose()
            await fetcher.aclose()
        async with httpx.AsyncClient(trust_env=False) as client:
            for _ in range(100):
                if (await client.get(server.url + "/health")).json()["in_flight"] == 0:
                    break
                await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(lambda: httpx.get(server.url + "/health", trust_env=False).json()))["in_flight"] == 0
        assert engine.frames < 50
