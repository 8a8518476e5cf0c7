"""The GPU slot limit and cancellation, with an engine whose frames we can hold and release."""

from __future__ import annotations

import threading
import time

import httpx

from face_swap_helpers import GateEngine, post_process, settings_for
from model_servers.face_swap.app import create_app
from support import LiveServer


def health(url):
    return httpx.get(url + "/health", trust_env=False).json()


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_requests_queue_for_the_slot_instead_of_oversubscribing(tmp_path, photos):
    engine = GateEngine()
    app = create_app(settings_for(tmp_path, gpu_slots=1), engine=engine)
    with LiveServer(app) as server:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(post_process(server.url, photos["hopper"], photos["astronaut"])))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        assert wait_for(lambda: health(server.url)["in_flight"] == 3)
        h = health(server.url)
        assert h["capacity"] == 1
        time.sleep(0.3)
        assert engine.max_running == 1  # two wait for the device, one runs
        engine.gate.set()
        for t in threads:
            t.join(30)
        assert [r[0] for r in results] == [200, 200, 200]
        assert engine.max_running == 1
        assert health(server.url)["in_flight"] == 0


def test_two_slots_run_two_jobs_at_once(tmp_path, photos):
    engine = GateEngine()
    with LiveServer(create_app(settings_for(tmp_path, gpu_slots=2), engine=engine)) as server:
        threads = [
            threading.Thread(target=post_process, args=(server.url, photos["hopper"], photos["astronaut"]))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        assert wait_for(lambda: engine.running == 2)
        time.sleep(0.2)
        assert engine.max_running == 2
        engine.gate.set()
        for t in threads:
            t.join(30)


def test_a_client_that_goes_away_stops_the_job_and_frees_the_slot(tmp_path, photos, clips):
    engine = GateEngine(frame_s=0.05)  # 50 frames would take 2.5 s
    settings = settings_for(tmp_path, progress_every_frames=2, batch_frames=2)
    with LiveServer(create_app(settings, engine=engine)) as server:
        with open(photos["hopper"], "rb") as s, open(clips["audio"], "rb") as t:
            with httpx.Client(timeout=30, trust_env=False) as client:
                with client.stream("POST", server.url + "/process", files={"source": s, "target": t}) as resp:
                    assert resp.status_code == 200
                    next(resp.iter_bytes())  # the first progress part: the job is running
        assert wait_for(lambda: health(server.url)["in_flight"] == 0, timeout=5)
        stopped_at = engine.frames
        assert stopped_at < 50
        time.sleep(0.3)
        assert engine.frames == stopped_at  # nothing runs on after the stop


class SlowLoadEngine(GateEngine):
    def load(self) -> str:
        if not self.gate.wait(30):
            raise RuntimeError("never released")
        return "loaded"


class BrokenEngine(GateEngine):
    def load(self) -> str:
        raise RuntimeError("model file is corrupt")


def test_health_says_loading_until_models_are_in(tmp_path, photos):
    engine = SlowLoadEngine()
    with LiveServer(create_app(settings_for(tmp_path), engine=engine), wait_loaded=False) as server:
        h = health(server.url)
        assert h["status"] == "loading" and h["model_loaded"] is False
        status, body, _ = post_process(server.url, photos["hopper"], photos["astronaut"])
        assert status == 503 and body["error"]["code"] == "model_unavailable"
        ready = httpx.get(server.url + "/ready", trust_env=False)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_unavailable"
        assert ready.headers["retry-after"] == "5"
        engine.gate.set()
        assert wait_for(lambda: health(server.url)["status"] == "healthy")
        assert health(server.url)["message"] == "loaded"
        assert httpx.get(server.url + "/ready", trust_env=False).status_code == 200


def test_a_load_that_crashes_leaves_the_server_up_and_unhealthy(tmp_path):
    with LiveServer(create_app(settings_for(tmp_path), engine=BrokenEngine()), wait_loaded=False) as server:
        assert wait_for(lambda: health(server.url)["status"] == "unhealthy")
        assert "model file is corrupt" in health(server.url)["message"]


class FailingEngine(GateEngine):
    """Fails on the 4th frame, after the response (and its progress parts) has started."""

    def __init__(self, error: Exception) -> None:
        super().__init__(frame_s=0.001)
        self.error = error

    def swap(self, frame):
        if self.frames >= 3:
            raise self.error
        return super().swap(frame)


def test_a_failure_mid_video_arrives_as_an_error_part(tmp_path, photos, clips):
    from model_servers.face_swap.errors import InvalidMedia

    for error, code, retryable in (
        (InvalidMedia("frame 4 is broken"), "invalid_media", False),
        (ZeroDivisionError("a bug"), "face_swap_failed", True),
    ):
        settings = settings_for(tmp_path, progress_every_frames=1, batch_frames=1)
        with LiveServer(create_app(settings, engine=FailingEngine(error))) as server:
            status, events, files = post_process(server.url, photos["hopper"], clips["audio"])
            assert status == 200 and events[0][0] == "progress"
            kind, body = events[-1]
            assert kind == "error" and body["error"]["code"] == code and body["retryable"] is retryable
            assert not files
            assert health(server.url)["in_flight"] == 0
