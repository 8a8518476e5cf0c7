"""End to end through the fleet: task API, a consumer process, a TTS server process (espeak-ng), local storage."""

from __future__ import annotations

import io
import wave

import httpx
import pytest

from model_servers.tts.app import create_app
from model_servers.tts.settings import TtsSettings
from model_servers.tts.subtitles import parse_srt
from support import LiveServer, task_fleet, wait_done
from tts_helpers import OutOfMemoryEngine, Process, check_srt_tiles, free_port, tts_server

pytestmark = pytest.mark.timeout(120)

TEXT = "The fleet is up. Every sentence gets its own subtitle! Is that not neat?"


@pytest.fixture
def fleet(tmp_path):
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    api_port, metrics_port = free_port(), free_port()
    api = Process(
        "task_api", ["--host", "127.0.0.1", "--port", str(api_port)],
        {"TASKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}", "TASKFLEET_STORAGE_URL": storage.as_uri()},
        f"http://127.0.0.1:{api_port}/ready", tmp_path / "api.log",
    )
    with tts_server(tmp_path) as tts, api:
        consumer = Process(
            "consumer", [],
            {
                "TASKFLEET_API_URL": api.url,
                "TASKFLEET_WORKFLOWS": "tts",
                "TASKFLEET_TTS_URLS": tts.url,
                "TASKFLEET_STORAGE_URL": storage.as_uri(),
                "TASKFLEET_WORK_DIR": str(work),
                "TASKFLEET_METRICS_PORT": str(metrics_port),
                "TASKFLEET_FETCH_WAIT_S": "1",
                "TASKFLEET_LOG_FORMAT": "text",
            },
            f"http://127.0.0.1:{metrics_port}/metrics", tmp_path / "consumer.log",
        )
        with consumer:
            yield api


def test_create_task_poll_and_fetch_the_files(fleet):
    with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
        created = client.post("/api/tts/create-task", json={"text": TEXT, "speed": 1.5, "format": "mp3"})
        assert created.status_code == 201 and created.json()["status"] == "PENDING"
        task = wait_done(client, created.json()["task_id"])
        assert task["status"] == "COMPLETED", task
        out = task["output"]
        assert out["format"] == "mp3" and out["engine"] == "espeak" and out["sample_rate"] == 22050
        assert out["storage_provider"] == "local"
        assert [s["text"] for s in out["sentences"]] == [
            "The fleet is up.", "Every sentence gets its own subtitle!", "Is that not neat?",
        ]
        audio = client.get(out["audio_url"])
        assert audio.status_code == 200 and audio.content[:3] == b"ID3"
        srt = client.get(out["srt_url"])
        assert srt.status_code == 200
        check_srt_tiles(srt.text, out["duration_s"], [s["text"] for s in out["sentences"]])


def test_process_waits_and_returns_the_result(fleet):
    with httpx.Client(base_url=fleet.url, timeout=90, trust_env=False) as client:
        response = client.post("/api/tts/process", params={"wait_s": 60}, json={"text": TEXT, "language": "en"})
        assert response.status_code == 200, response.text
        out = response.json()
        with wave.open(io.BytesIO(client.get(out["audio_url"]).content)) as w:
            assert abs(w.getnframes() / w.getframerate() - out["duration_s"]) < 0.002
        cues = parse_srt(client.get(out["srt_url"]).text)
        assert [c[2] for c in cues] == [s["text"] for s in out["sentences"]]


def test_bad_text_is_refused_before_it_is_queued(fleet):
    with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
        for body in ({"text": ""}, {"text": "x" * 20_001}, {"text": "hi", "speed": 9}):
            for path in ("/api/tts/create-task", "/api/tts/process"):
                assert client.post(path, json=body).status_code == 422


def test_reference_audio_fails_the_task_with_a_clear_code(fleet):
    with httpx.Client(base_url=fleet.url, timeout=90, trust_env=False) as client:
        upload = client.post("/api/files", files={"file": ("me.wav", b"RIFF\x00\x00\x00\x00WAVE", "audio/wav")})
        assert upload.status_code == 201
        response = client.post(
            "/api/tts/process", params={"wait_s": 60}, json={"text": "Hi.", "reference_audio_url": upload.json()["url"]}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "voice_cloning_unsupported"
        task = client.get(f"/api/tasks/{response.json()['task_id']}").json()
        assert task["status"] == "FAILED" and task["attempts"] == 1


def test_out_of_memory_counts_each_attempt_and_fails_the_task_after_max_attempts(tmp_path):
    settings = TtsSettings(tts_engine="espeak")
    engine = OutOfMemoryEngine(settings)
    with LiveServer(create_app(settings, engine=engine)) as server:
        with task_fleet(tmp_path, "tts", TASKFLEET_TTS_URLS=server.url) as client:
            created = client.post("/api/tasks", json={"workflow": "tts", "input": {"text": "Hi."}, "max_attempts": 2})
            assert created.status_code == 201, created.text
            task = wait_done(client, created.json()["task_id"], timeout_s=60)
    assert task["status"] == "FAILED" and task["attempts"] == 2, task
    assert task["error"]["code"] == "out_of_memory"
    assert engine.calls == 2
