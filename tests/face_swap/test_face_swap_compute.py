"""Compute accounting on the face swap server, whose answer streams while the job holds its
slot: the headers carry no X-Compute-Seconds, the final result (or error) part carries
``compute_s``, and the /metrics counter equals what the parts reported."""

from __future__ import annotations

import json

import httpx

from face_swap_helpers import GateEngine, post_process, settings_for
from model_servers.face_swap.app import create_app
from support import LiveServer
from test_face_swap_slots import health


def compute_total(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "taskfleet_model_server_compute_seconds_total":
                return sample.value
    raise AssertionError("no compute counter")


def test_the_streamed_result_carries_the_slot_seconds_and_the_headers_do_not(tmp_path, photos, clips):
    engine = GateEngine(frame_s=0.02)
    with LiveServer(create_app(settings_for(tmp_path), engine=engine)) as server:
        with open(photos["hopper"], "rb") as s, open(clips["audio"], "rb") as t:
            with httpx.Client(timeout=60, trust_env=False) as client:
                with client.stream("POST", server.url + "/process", files={"source": s, "target": t}) as resp:
                    assert resp.status_code == 200
                    # Sent before the job ended: any figure here would be short of the truth.
                    assert "x-compute-seconds" not in resp.headers
                    resp.read()
        status, events, _ = post_process(server.url, photos["hopper"], clips["audio"])
        assert status == 200
        [result] = [value for name, value in events if name == "result"]
        assert result["compute_s"] >= engine.frame_s  # at least one frame's worth of swapping
        assert health(server.url)["in_flight"] == 0
        # Two jobs ran; the counter has both, the second one's exactly as its part said.
        total = compute_total(server.url)
        assert total > result["compute_s"]


def test_a_refusal_before_the_stream_reports_in_the_header(tmp_path, photos):
    with LiveServer(create_app(settings_for(tmp_path), engine=GateEngine())) as server:
        with open(photos["hopper"], "rb") as s:
            response = httpx.post(server.url + "/process", files={"source": s}, trust_env=False, timeout=30)
        assert response.status_code == 422 and response.json()["error"]["code"] == "missing_file"
        assert float(response.headers["x-compute-seconds"]) == 0.0
        assert json.loads(response.text)["error"]
