"""The hot routes (create, fetch, complete with fetch) are answered below FastAPI's router, and
whatever they do not take as it stands gets FastAPI's own answer (task_api/hot_routes.py).

In-process (the app under httpx's ASGI transport) so that the test can see which requests
reached FastAPI's router; every other API test sends these requests to a real uvicorn server.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.routing import Router

from task_api.app import create_app
from task_api.settings import ApiSettings

PRODUCER, CONSUMER = "p-token", "c-token"


@pytest.fixture
def routed(monkeypatch):
    """The paths of the requests that reached FastAPI's router."""
    paths: list[str] = []
    route = Router.__call__

    async def recording(self, scope, receive, send):
        paths.append(scope["path"])
        await route(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", recording)
    return paths


@pytest.fixture
async def http(database_url, tmp_path):
    settings = ApiSettings(
        database_url=database_url, storage_url=f"file://{tmp_path}/s", max_wait_s=1,
        producer_tokens=PRODUCER, consumer_tokens=CONSUMER,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


def as_producer() -> dict[str, str]:
    return {"authorization": f"Bearer {PRODUCER}"}


def as_consumer() -> dict[str, str]:
    return {"authorization": f"Bearer {CONSUMER}"}


async def test_a_task_goes_through_without_reaching_fastapis_router(http, routed):
    r = await http.post("/api/tasks", json={"workflow": "echo", "input": {"data": 1}}, headers=as_producer())
    assert r.status_code == 201
    first = r.json()["task_id"]
    await http.post("/api/tasks", json={"workflow": "echo", "input": {"data": 2}}, headers=as_producer())
    r = await http.get("/api/comm/task/fetch", params={"workflow": "echo", "wait_s": 0, "consumer_id": "c1"},
                       headers=as_consumer())
    assert r.status_code == 200
    [task] = r.json()["tasks"]
    assert (task["task_id"], task["input"]["data"]) == (first, 1)
    r = await http.post("/api/comm/tasks/complete", headers=as_consumer(), json={
        "items": [{"task_id": first, "lease_id": task["lease"]["id"], "output": {"ok": 1}}],
        "fetch": {"workflow": ["echo"], "consumer_id": "c1", "wait_s": 0},
    })
    assert r.status_code == 200
    assert r.json()["results"] == [{"task_id": first, "status": "COMPLETED"}]
    assert [t["input"]["data"] for t in r.json()["tasks"]] == [2]
    r = await http.get("/api/comm/task/fetch", params={"wait_s": 0}, headers=as_consumer())
    assert r.status_code == 204
    assert routed == []
    # Any other route is FastAPI's, as before.
    r = await http.get(f"/api/tasks/{first}", headers=as_producer())
    assert (r.status_code, r.json()["status"]) == (200, "COMPLETED")
    assert routed == [f"/api/tasks/{first}"]


async def test_a_refused_token_gets_the_apps_answer_from_the_hot_routes(http, routed):
    r = await http.post("/api/tasks", json={"workflow": "echo"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await http.post("/api/tasks", json={"workflow": "echo"}, headers=as_consumer())
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    r = await http.get("/api/comm/task/fetch", params={"wait_s": 0}, headers=as_producer())
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    # The create reads its own body: its refusals are the app's handlers' too.
    r = await http.post("/api/tasks", json={"workflow": "echo", "surprise": 1}, headers=as_producer())
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
    assert r.json()["error"]["details"][0]["loc"] == ["body", "surprise"]
    assert routed == []


@pytest.mark.parametrize(("params", "loc"), [
    ({"limit": 0}, ["query", "limit"]),
    ({"limit": "many"}, ["query", "limit"]),
    ({"wait_s": 5}, ["query", "wait_s"]),  # over TASKFLEET_MAX_WAIT_S
    ({"consumer_id": ""}, ["query", "consumer_id"]),
    ({"wake_on_finish": "perhaps"}, ["query", "wake_on_finish"]),
    ({"workflow": ["echo"] * 51}, ["query", "workflow"]),
])
async def test_a_fetch_query_that_does_not_pass_gets_fastapis_answer(http, routed, params, loc):
    r = await http.get("/api/comm/task/fetch", params={"wait_s": 0, **params}, headers=as_consumer())
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
    assert r.json()["error"]["details"][0]["loc"] == loc
    assert routed == ["/api/comm/task/fetch"]


async def test_a_completions_body_that_does_not_pass_gets_fastapis_answer(http, routed):
    created = await http.post("/api/tasks", json={"workflow": "echo"}, headers=as_producer())
    task = (await http.get("/api/comm/task/fetch", params={"wait_s": 0}, headers=as_consumer())).json()["tasks"][0]
    item = {"task_id": task["task_id"], "lease_id": task["lease"]["id"], "output": None}
    refused = [
        ({"json": {"items": []}}, 422, "validation_error", ["body", "items"]),
        ({"json": {"items": [item], "fetch": {"limit": 0}}}, 422, "validation_error", ["body", "fetch", "limit"]),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json", None),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 422, "validation_error", ["body"]),
        ({"content": b'{"items": [{"task_id": "t", "lease_id": "l", "output": 1e400}]}'}, 422, "non_finite_number", None),
        # Not JSON by its content type: FastAPI does not read it as JSON.
        ({"content": b'{"items": []}', "headers": {"content-type": "text/plain"}}, 422, "validation_error", ["body"]),
    ]
    for kwargs, status, code, loc in refused:
        r = await http.post("/api/comm/tasks/complete", **{**kwargs, "headers": {**as_consumer(), **kwargs.get("headers", {})}})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), kwargs
        if loc is not None:
            assert r.json()["error"]["details"][0]["loc"] == loc
    # FastAPI read the body the hot route had read already (the locations inside it show it).
    assert routed == ["/api/comm/tasks/complete"] * len(refused)
    # Nothing was completed by the refusals: the lease still holds.
    r = await http.post("/api/comm/tasks/complete", json={"items": [item]}, headers=as_consumer())
    assert r.json()["results"] == [{"task_id": created.json()["task_id"], "status": "COMPLETED"}]
    assert len(routed) == len(refused)


async def test_a_process_call_goes_through_without_reaching_fastapis_router(http, routed):
    import asyncio

    waiting = asyncio.ensure_future(http.post("/api/echo/process", params={"wait_s": "2"}, json={"data": 7},
                                              headers=as_producer()))
    task = None
    while task is None:  # the consumer's fetch, until the /process call's task is there
        r = await http.get("/api/comm/task/fetch", params={"wait_s": 0.2, "consumer_id": "c1"}, headers=as_consumer())
        task = r.json()["tasks"][0] if r.status_code == 200 else None
    assert task["input"]["data"] == 7
    await http.post("/api/comm/tasks/complete", headers=as_consumer(), json={
        "items": [{"task_id": task["task_id"], "lease_id": task["lease"]["id"], "output": {"data": 7}}]})
    r = await waiting
    assert (r.status_code, r.json()) == (200, {"data": 7})
    # wait_s=0 answers at once; an unknown route is the app's own 404.
    r = await http.post("/api/echo/process?wait_s=0", json={"data": 8}, headers=as_producer())
    assert (r.status_code, r.json()["status"]) == (202, "PENDING")
    r = await http.post("/api/nowhere/process", json={}, headers=as_producer())
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert routed == []


async def test_a_process_call_that_does_not_pass_gets_fastapis_answer(http, routed):
    refused = [
        ({"params": {"wait_s": "-1"}, "json": {}}, 422, "validation_error", ["query", "wait_s"]),
        ({"params": {"wait_s": "601"}, "json": {}}, 422, "validation_error", ["query", "wait_s"]),  # over the cap
        ({"params": {"wait_s": "soon"}, "json": {}}, 422, "validation_error", ["query", "wait_s"]),
        ({"json": [1, 2]}, 422, "validation_error", ["body"]),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json", None),
        ({"content": b'{"data": 1e400}'}, 422, "non_finite_number", None),
    ]
    for kwargs, status, code, loc in refused:
        r = await http.post("/api/echo/process", **{**kwargs, "headers": {**as_producer(), **kwargs.get("headers", {})}})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), kwargs
        if loc is not None:
            assert r.json()["error"]["details"][0]["loc"] == loc, kwargs
    assert routed == ["/api/echo/process"] * len(refused)
    # Only one segment between /api/ and /process is a route: this path is FastAPI's 404.
    r = await http.post("/api/echo/more/process", json={}, headers=as_producer())
    assert r.status_code == 404
    assert routed[-1] == "/api/echo/more/process"
    # Nothing was created by the refusals.
    r = await http.get("/api/tasks", headers=as_producer())
    assert r.json()["items"] == []
