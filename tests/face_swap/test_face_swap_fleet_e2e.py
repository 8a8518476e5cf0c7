"""End to end through the fleet: task API, a consumer process, a lite face-swap server process, local storage."""

from __future__ import annotations

import cv2
import httpx
import numpy as np
import pytest

from face_swap_helpers import OutOfMemoryEngine, settings_for
from model_servers.face_swap.app import create_app
from support import LiveServer, ServerProcess, api_process, consumer_process, free_port, task_fleet, wait_done

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    fs_port = free_port()
    server = ServerProcess(
        "model_servers.face_swap", ["--host", "127.0.0.1", "--port", str(fs_port)],
        {"TASKFLEET_FACE_SWAP_ENGINE": "lite", "TASKFLEET_MODELS_DIR": str(tmp / "models")}, "/health", fs_port,
    )  # fmt: skip
    api = api_process(f"sqlite:///{tmp / 'tasks.db'}", tmp)
    with server, api:
        consumer = consumer_process(api.url, tmp, "face_swap", TASKFLEET_FACE_SWAP_URLS=server.url)
        with consumer:
            yield api


def upload(client: httpx.Client, path, ctype: str) -> str:
    with open(path, "rb") as fh:
        r = client.post("/api/files", files={"file": (path.name, fh, ctype)})
    assert r.status_code == 201, r.text
    return r.json()["url"]


def test_create_task_swaps_two_real_faces(fleet, photos):
    with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
        body = {
            "source_url": upload(client, photos["hopper"], "image/jpeg"),
            "target_url": upload(client, photos["astronaut"], "image/png"),
            "output_formats": ["jpg"],
        }
        created = client.post("/api/face-swap/create-task", json=body)
        assert created.status_code == 201 and created.json()["status"] == "PENDING"
        task = wait_done(client, created.json()["task_id"])
        assert task["status"] == "COMPLETED", task
        out = task["output"]
        assert out["status"] == "success" and out["job_id"] == task["task_id"]
        assert out["metadata"]["storage_provider"] == "local" and out["metadata"]["faces_detected"] == 1
        image = client.get(out["output_path"])
        assert image.status_code == 200 and image.content[:3] == b"\xff\xd8\xff"
        swapped = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
        original = cv2.imread(str(photos["astronaut"]))
        assert np.abs(swapped[70:170, 180:260].astype(int) - original[70:170, 180:260]).mean() > 8  # the face
        assert np.abs(swapped[400:, :100].astype(int) - original[400:, :100]).mean() < 3  # jpeg noise only


def test_process_waits_for_a_video_and_reports_progress(fleet, photos, clips, tools):
    with httpx.Client(base_url=fleet.url, timeout=120, trust_env=False) as client:
        body = {
            "source_url": upload(client, photos["astronaut"], "image/png"),
            "target_url": upload(client, clips["audio"], "video/mp4"),
            "output_formats": ["mp4", "gif"],
        }
        response = client.post("/api/face-swap/process", params={"wait_s": 90}, json=body)
        assert response.status_code == 200, response.text
        out = response.json()
        meta = out["metadata"]
        assert meta["frames_processed"] == 50 and meta["fps"] == 25 and meta["audio"] is True
        assert client.get(out["output_path"]).content[4:8] == b"ftyp"
        assert client.get(meta["gif_url"]).content[:6] == b"GIF89a"


def test_no_face_fails_the_task_once_with_a_clear_code(fleet, photos):
    with httpx.Client(base_url=fleet.url, timeout=90, trust_env=False) as client:
        body = {
            "source_url": upload(client, photos["noface"], "image/jpeg"),
            "target_url": upload(client, photos["astronaut"], "image/png"),
        }
        response = client.post("/api/face-swap/process", params={"wait_s": 60}, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "no_source_face"
        task = client.get(f"/api/tasks/{response.json()['task_id']}").json()
        assert task["status"] == "FAILED" and task["attempts"] == 1


def test_bad_input_is_refused_before_it_is_queued(fleet):
    with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
        for body in ({"source_url": "https://x/a.jpg"}, {"source_url": "a", "target_url": "b", "video_quality": 500}):
            assert client.post("/api/face-swap/create-task", json=body).status_code == 422


def test_out_of_memory_counts_each_attempt_and_fails_the_task_after_max_attempts(tmp_path, photos):
    engine = OutOfMemoryEngine()
    with LiveServer(create_app(settings_for(tmp_path), engine=engine)) as server:
        with task_fleet(tmp_path, "face_swap", TASKFLEET_FACE_SWAP_URLS=server.url) as client:
            body = {
                "workflow": "face_swap",
                "input": {
                    "source_url": upload(client, photos["hopper"], "image/jpeg"),
                    "target_url": upload(client, photos["astronaut"], "image/png"),
                },
                "max_attempts": 2,
            }
            created = client.post("/api/tasks", json=body)
            assert created.status_code == 201, created.text
            task = wait_done(client, created.json()["task_id"], timeout_s=60)
    assert task["status"] == "FAILED" and task["attempts"] == 2, task
    assert task["error"]["code"] == "out_of_memory"
    assert engine.jobs == 2
