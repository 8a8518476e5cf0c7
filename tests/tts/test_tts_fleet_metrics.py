"""What an operator scrapes: a real TTS server's /metrics (device slots, request seconds by route
and status) and a real consumer's (in flight, slot wait, calls in flight per model server)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import api_process, consumer_process, wait_done
from tts_helpers import tts_server

pytestmark = pytest.mark.timeout(120)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url + "/metrics", trust_env=False).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_model_server_and_consumer_metrics(tmp_path):
    with tts_server(tmp_path) as tts, api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path) as api:
        with consumer_process(api.url, tmp_path, "tts", TASKFLEET_TTS_URLS=tts.url, TASKFLEET_CONCURRENCY="1") as consumer:
            with httpx.Client(base_url=api.url, timeout=30, trust_env=False) as client:
                # Two tasks, one slot: the consumer holds back while the first runs.
                ids = [client.post("/api/tts/create-task", json={"text": f"Task number {n}."}).json()["task_id"] for n in (1, 2)]
                for task_id in ids:
                    assert wait_done(client, task_id)["status"] == "COMPLETED"
            assert httpx.get(tts.url + "/no-such-route", trust_env=False).status_code == 404

            server = scrape(tts.url)
            assert server[("taskfleet_model_server_request_seconds_count", (("route", "/tts"), ("status", "200")))] == 2
            # A path no route has is counted under one label value, whatever the path.
            assert server[("taskfleet_model_server_request_seconds_count", (("route", "unmatched"), ("status", "404")))] == 1
            assert server[("taskfleet_model_server_slot_wait_seconds_count", ())] == 2
            assert server[("taskfleet_model_server_in_flight", ())] == 0
            assert server[("taskfleet_model_server_waiting", ())] == 0
            assert server[("taskfleet_model_server_capacity", ())] == 1

            mine = scrape(consumer.url)
            assert mine[("taskfleet_consumer_tasks_total", (("outcome", "completed"), ("workflow", "tts")))] == 2
            assert mine[("taskfleet_consumer_in_flight", (("workflow", "tts"),))] == 0
            assert mine[("taskfleet_consumer_model_in_flight", (("kind", "tts"), ("server", tts.url)))] == 0
            assert mine[("taskfleet_consumer_slot_wait_seconds_total", ())] > 0
            names = {name for name, _ in mine} | {name for name, _ in server}
            assert not {n for n in names if n.endswith("_created_created") or n.endswith("_total_total")}
