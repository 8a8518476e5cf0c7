"""The image_gen processor against a real Flux server through the consumer's model-server client."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from consumer.context import TaskContext
from consumer.errors import ModelServerError, ModelServerUnavailable
from consumer.model_client import ModelServerPool
from consumer.processors.image_gen import process
from taskfleet.errors import TaskfleetError
from taskfleet.workflows import WorkflowRegistry
from taskfleet.workflows.image_gen import IMAGE_GEN, ImageGenOutput


class DirStorage:
    """The storage calls the processor makes, over a plain directory."""

    provider = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def output_key(self, workflow: str, task_id: str, name: str) -> str:
        return f"out/{workflow}/{task_id}/{name}"

    async def put_file(self, key: str, path: Path | bytes, content_type: str | None = None):
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
        dest.write_bytes(data)
        return SimpleNamespace(
            key=key, url=f"http://files.test/{key}", storage_url=dest.as_uri(), size=len(data), content_type=content_type
        )

    async def put_files(self, items):
        return [await self.put_file(key, path, content_type) for key, path, content_type in items]


def make_ctx(tmp_path: Path, url: str, data: dict) -> TaskContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    pool = ModelServerPool("flux", [url], breaker_reset_s=0.1)
    return TaskContext(
        task_id="tsk_test",
        workflow="image_gen",
        input=IMAGE_GEN.validate_input(data),
        attempt=1,
        workdir=work,
        storage=DirStorage(tmp_path / "store"),
        timeout_s=60,
        model_server_kind="flux",
        _pools={"flux": pool.client(60)},
    )


async def test_images_are_stored_and_listed_with_seed_and_size(flux_server, tmp_path):
    ctx = make_ctx(
        tmp_path,
        flux_server.url,
        {"prompt": "a lake at night", "width": 70, "height": 64, "num_inference_steps": 2, "seed": 42,
         "num_images": 2, "output_format": "webp", "lora_name": "style_b", "lora_weight": 0.5},
    )
    out = await process(ctx)
    ImageGenOutput.model_validate(out)
    assert [img["seed"] for img in out["images"]] == [42, 43]
    assert out["seed"] == 42
    assert (out["width"], out["height"], out["requested_width"], out["size_rounded"]) == (64, 64, 70, True)
    assert out["lora_name"] == "style_b" and out["lora_weight"] == 0.5
    assert out["storage_provider"] == "local"
    for i, img in enumerate(out["images"]):
        assert img["url"] == f"http://files.test/out/image_gen/tsk_test/image_{i}.webp"
        assert (img["width"], img["height"], img["content_type"]) == (64, 64, "image/webp")
        stored = tmp_path / "store" / "out" / "image_gen" / "tsk_test" / f"image_{i}.webp"
        assert Image.open(stored).size == (64, 64)
    from consumer.context import workdir_made

    assert not workdir_made(ctx)  # stored from memory: the images never touched the work directory


async def test_the_server_refusing_the_input_fails_the_task_for_good(flux_server, tmp_path):
    ctx = make_ctx(tmp_path, flux_server.url, {"prompt": "x", "width": 64, "height": 64, "lora_name": "missing"})
    with pytest.raises(TaskfleetError) as err:
        await process(ctx)
    assert err.value.code == "lora_not_found" and err.value.retryable is False


async def test_an_unhealthy_server_releases_the_task(start_flux_server, tmp_path):
    server = start_flux_server(flux_model=str(tmp_path / "absent"))
    try:
        ctx = make_ctx(tmp_path, server.url, {"prompt": "x", "width": 64, "height": 64})
        with pytest.raises(ModelServerUnavailable):
            await process(ctx)
    finally:
        server.close()


def test_the_workflow_is_registered_and_validates_like_the_server():
    wf = WorkflowRegistry.from_entry_points().by_alias("image")
    assert wf is IMAGE_GEN and wf.name == "image_gen" and wf.model_server == "flux"
    got = wf.validate_input({"prompt": "a cat", "output_format": "JPEG"})
    assert got["output_format"] == "jpg" and got["seed"] == -1 and got["num_images"] == 1
    with pytest.raises(TaskfleetError) as err:
        wf.validate_input({"prompt": "a cat", "lora_weight": 2})
    assert err.value.status == 422


def test_the_fleet_side_imports_no_torch():
    code = (
        "import sys; import consumer.processors.image_gen, taskfleet.workflows.image_gen; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class CannedServer:
    """Answers every call with one fixed body, as a misbehaving server would."""

    def __init__(self, body) -> None:
        self.body = body

    async def request(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.Response(200, json=self.body)


@pytest.mark.parametrize(
    "body",
    [
        {"images": [{"seed": 1, "width": 64, "height": 64, "content_type": "image/png", "data": "not base64!"}]},
        {"images": [{"seed": 1}]},
        {"images": []},
        ["not", "an", "object"],
    ],
)
async def test_a_malformed_server_answer_fails_the_attempt_retryably(tmp_path, body):
    ctx = make_ctx(tmp_path, "http://127.0.0.1:9", {"prompt": "x"})
    ctx._pools = {"flux": CannedServer(body)}
    with pytest.raises(ModelServerError) as err:
        await process(ctx)
    assert err.value.retryable is True
