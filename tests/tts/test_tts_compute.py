"""Compute accounting at the model server: the real TTS app (espeak-ng) answers each request
with the seconds it held a device slot (X-Compute-Seconds), an error answer too, and its
/metrics counter is the sum of what the answers reported."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from model_servers.tts.app import create_app
from tts_helpers import OutOfMemoryEngine, serve_app


def compute_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "taskfleet_model_server_compute_seconds_total":
                return sample.value
    raise AssertionError("no taskfleet_model_server_compute_seconds_total")


async def test_each_answer_reports_the_seconds_it_held_a_slot(espeak):
    reported = []
    for text in ("A short one.", "A somewhat longer sentence, to take a little more time. And another one."):
        started = time.perf_counter()
        response = await espeak.post("/tts", json={"text": text})
        wall = time.perf_counter() - started
        assert response.status_code == 200
        seconds = float(response.headers["x-compute-seconds"])
        assert 0 < seconds <= wall  # synthesis ran under the slot, inside the request
        reported.append(seconds)
    # Refused before it needs the device: it held no slot.
    refused = await espeak.post("/tts", json={"text": "   "})
    assert refused.status_code == 422 and float(refused.headers["x-compute-seconds"]) == 0.0
    # Routes that never take a slot say 0 as well; the counter holds exactly what was reported.
    metrics = await espeak.get("/metrics")
    assert float(metrics.headers["x-compute-seconds"]) == 0.0
    assert abs(compute_total(metrics.text) - sum(reported)) < 1e-5


async def test_an_error_inside_the_slot_still_reports_its_seconds(espeak_settings):
    engine = OutOfMemoryEngine(espeak_settings)
    async with serve_app(create_app(espeak_settings, engine=engine)) as client:
        response = await client.post("/tts", json={"text": "Too big to fit."})
        assert response.status_code == 500 and response.json()["error"]["code"] == "out_of_memory"
        assert engine.calls >= 1
        seconds = float(response.headers["x-compute-seconds"])
        assert seconds > 0
        assert abs(compute_total((await client.get("/metrics")).text) - seconds) < 1e-5
