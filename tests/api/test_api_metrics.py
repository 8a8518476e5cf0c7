"""/metrics exposes tasks by workflow and status, queue depth, oldest pending age, attempts, durations."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_reflect_the_queue(api, producer, consumer):
    for i in range(3):
        await producer.submit("echo", {"data": i})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.complete(t["task_id"], t["lease"]["id"], {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.release(t["task_id"], t["lease"]["id"])
    async with httpx.AsyncClient(base_url=api.url) as http:
        m = samples((await http.get("/metrics")).text)
    assert m[("taskfleet_tasks", (("status", "PENDING"), ("workflow", "echo")))] == 2
    assert m[("taskfleet_tasks", (("status", "COMPLETED"), ("workflow", "echo")))] == 1
    assert m[("taskfleet_queue_depth", ())] == 2
    assert m[("taskfleet_oldest_pending_age_seconds", (("workflow", "echo"),))] > 0
    assert m[("taskfleet_attempts_total", (("outcome", "completed"), ("workflow", "echo")))] == 1
    assert m[("taskfleet_attempts_total", (("outcome", "released"), ("workflow", "echo")))] == 1
    assert m[("taskfleet_task_duration_seconds_count", (("status", "COMPLETED"), ("workflow", "echo")))] == 1
    assert m[("taskfleet_tasks_accepted_total", (("workflow", "echo"),))] == 3
    # prometheus-client's own suffixes, once: every counter NAME_total (and NAME_created), no doubles.
    names = {name for name, _ in m}
    assert not {n for n in names if n.endswith("_created_created") or n.endswith("_total_total")}
    assert "taskfleet_tasks_accepted_created" in names
