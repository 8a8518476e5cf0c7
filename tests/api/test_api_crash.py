"""SIGKILL of the API during a burst of creates: every create that got a 2xx survives the restart."""

from __future__ import annotations

import asyncio

import httpx

from support import api_process


async def test_sigkill_during_create_burst_loses_no_acknowledged_task(database_url, tmp_path):
    server = api_process(database_url, tmp_path).start()
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def creator(n: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = await http.post("/api/tasks", json={"workflow": "echo", "input": {"data": [n, i]}})
                except httpx.HTTPError:
                    return  # the server died under us: this create may or may not have landed
                if r.status_code in (200, 201):
                    acknowledged.append(r.json()["task_id"])

    creators = [asyncio.create_task(creator(n)) for n in range(8)]
    while len(acknowledged) < 300:
        await asyncio.sleep(0.01)
    server.kill()
    stop.set()
    await asyncio.gather(*creators)

    restarted = api_process(database_url, tmp_path, port=server.port).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url) as http:
            missing = []
            for task_id in acknowledged:
                r = await http.get(f"/api/tasks/{task_id}")
                if r.status_code != 200:
                    missing.append(task_id)
            assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged tasks lost"
    finally:
        restarted.terminate()
