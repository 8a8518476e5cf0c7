"""End to end through the fleet: task API, a consumer process, a Flux server process on the tiny model, local storage."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from flux_faults import cuda_out_of_memory
from support import ServerProcess, api_process, consumer_process, free_port, task_fleet, wait_done

pytestmark = pytest.mark.timeout(180)

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "max_sequence_length": 32}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_flux):
    tmp = tmp_path_factory.mktemp("fleet")
    flux_port = free_port()
    server = ServerProcess(
        "model_servers.flux", ["--host", "127.0.0.1", "--port", str(flux_port)],
        {
            "TASKFLEET_FLUX_MODEL": str(tiny_flux["model"]),
            "TASKFLEET_LORA_DIR": str(tiny_flux["loras"]),
            "TASKFLEET_FLUX_CPU_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        },
        "/health", flux_port,
    )  # fmt: skip
    api = api_process(f"sqlite:///{tmp / 'tasks.db'}", tmp)
    with server, api:
        consumer = consumer_process(api.url, tmp, "image_gen", TASKFLEET_FLUX_URLS=server.url)
        with consumer:
            yield api


def fetch_image(client: httpx.Client, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200, url
    return Image.open(io.BytesIO(r.content))


def test_create_task_stores_every_image_with_its_seed_and_size(fleet):
    with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
        body = {"prompt": "a red cat", **SMALL, "width": 100, "num_images": 2, "seed": 99, "output_format": "jpg"}
        created = client.post("/api/image/create-task", json=body)
        assert created.status_code == 201 and created.json()["status"] == "PENDING"
        task = wait_done(client, created.json()["task_id"])
        assert task["status"] == "COMPLETED", task
        out = task["output"]
        assert out["storage_provider"] == "local" and out["size_rounded"] is True
        assert [(i["seed"], i["width"], i["height"]) for i in out["images"]] == [(99, 96, 64), (100, 96, 64)]
        for img in out["images"]:
            assert f"/image_gen/{task['task_id']}/" in img["url"]
            pic = fetch_image(client, img["url"])
            assert pic.format == "JPEG" and pic.size == (96, 64)


def test_process_returns_the_result_and_the_seed_reproduces_it(fleet):
    with httpx.Client(base_url=fleet.url, timeout=90, trust_env=False) as client:
        first = client.post("/api/image/process", params={"wait_s": 60}, json={"prompt": "a lake", **SMALL})
        assert first.status_code == 200, first.text
        out = first.json()
        seed = out["images"][0]["seed"]
        again = client.post("/api/image/process", params={"wait_s": 60}, json={"prompt": "a lake", **SMALL, "seed": seed})
        assert again.status_code == 200, again.text
        a = client.get(out["images"][0]["url"]).content
        b = client.get(again.json()["images"][0]["url"]).content
        assert a == b


def test_bad_input_is_refused_before_it_is_queued(fleet):
    with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
        for body in ({"prompt": ""}, {"prompt": "x", "width": 8}, {"prompt": "x", "lora_weight": 3}, {"prompt": "x", "output_format": "gif"}):
            for path in ("/api/image/create-task", "/api/image/process"):
                assert client.post(path, json=body).status_code == 422, (path, body)


def test_an_unknown_lora_fails_the_task_once_with_its_code(fleet):
    with httpx.Client(base_url=fleet.url, timeout=90, trust_env=False) as client:
        r = client.post("/api/image/process", params={"wait_s": 60}, json={"prompt": "x", **SMALL, "lora_name": "nope"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "lora_not_found"
        task = client.get(f"/api/tasks/{r.json()['task_id']}").json()
        assert task["status"] == "FAILED" and task["attempts"] == 1


def test_out_of_memory_counts_each_attempt_and_fails_the_task_after_max_attempts(tmp_path, failing_flux):
    failing_flux.fail_with(cuda_out_of_memory)
    with task_fleet(tmp_path, "image_gen", TASKFLEET_FLUX_URLS=failing_flux.url) as client:
        created = client.post(
            "/api/tasks", json={"workflow": "image_gen", "input": {"prompt": "a red cat", **SMALL}, "max_attempts": 3}
        )
        assert created.status_code == 201, created.text
        # Were it taken for an outage, the task would be released uncounted and never end.
        task = wait_done(client, created.json()["task_id"], timeout_s=60)
    assert task["status"] == "FAILED" and task["attempts"] == 3, task
    assert task["error"]["code"] == "out_of_memory"
    assert failing_flux.pipeline_calls == 3
