"""Hostile bodies and parameters: refused with a 4xx and a stable code on both databases, before
anything is stored, with the queue and the client's keep-alive connection left working."""

from __future__ import annotations

import httpx
import pytest

from task_api.app import create_app
from task_api.queue import Queue
from task_api.settings import ApiSettings
from task_api.wakeup import Dispatcher

H = {"content-type": "application/json"}
NON_FINITE = [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"]


def client_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


class OneConnection:
    """Every request over one keep-alive connection: a server that drops it (as it does after
    a 500) fails the next request, and a new connection shows up as another client port."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1))
        self.ports: set[int] = set()

    def send(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        r = self.http.request(method, path, content=body, headers=H if body is not None else None)
        assert r.headers.get("connection") != "close", (method, path, body, r.status_code)
        self.ports.add(client_port(r))
        assert len(self.ports) == 1, f"the connection was replaced before {method} {path}"
        return r

    def refused(self, method: str, path: str, body: bytes | None, status: int, code: str) -> None:
        r = self.send(method, path, body)
        got = (r.status_code, r.json()["error"]["code"]) if r.status_code >= 400 else (r.status_code, r.text[:200])
        assert got == (status, code), (method, path, body)

    def json(self, method: str, path: str, payload: dict | None = None) -> dict:
        r = self.http.request(method, path, json=payload)
        assert r.status_code < 300, (method, path, r.status_code, r.text[:300])
        return r.json() if r.content else {}

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def conn(api):
    c = OneConnection(api.url)
    yield c
    c.close()


def leased_task(conn: OneConnection, data) -> tuple[str, str]:
    task_id = conn.json("POST", "/api/tasks", {"workflow": "echo", "input": {"data": data}})["task_id"]
    (task,) = conn.json("GET", "/api/comm/task/fetch?wait_s=0&limit=10")["tasks"]
    assert task["task_id"] == task_id
    return task_id, task["lease"]["id"]


def test_non_finite_numbers_are_refused_before_anything_is_stored(conn):
    for n in NON_FINITE:
        for path, body in [
            ("/api/tasks", b'{"workflow":"echo","input":{"data":1},"metadata":{"x":%s}}' % n),
            # Once taken in as null: echo answered null instead of what was sent.
            ("/api/tasks", b'{"workflow":"echo","input":{"data":%s}}' % n),
            ("/api/tasks", b'{"workflow":"echo","input":{"sleep_s":%s}}' % n),
            ("/api/tasks", b'{"workflow":"echo","timeout_s":%s}' % n),
            ("/api/tasks/batch", b'{"tasks":[{"workflow":"echo"},{"workflow":"echo","metadata":{"x":[1,%s]}}]}' % n),
            ("/api/echo/create-task", b'{"data":{"deep":[1,{"x":%s}]}}' % n),
            ("/api/echo/process?wait_s=0", b'{"data":%s}' % n),
        ]:
            conn.refused("POST", path, body, 422, "non_finite_number")
    assert conn.json("GET", "/api/tasks")["items"] == []  # nothing was committed

    task_id, lease = leased_task(conn, "innocent")
    for n in NON_FINITE:
        for path, body in [
            (f"/api/comm/task/{task_id}/heartbeat", b'{"lease_id":"%s","progress":{"percent":%s}}' % (lease.encode(), n)),
            (f"/api/comm/task/{task_id}/complete", b'{"lease_id":"%s","output":{"v":[%s]}}' % (lease.encode(), n)),
            ("/api/comm/tasks/complete", b'{"items":[{"task_id":"%s","lease_id":"%s","output":%s}]}' % (task_id.encode(), lease.encode(), n)),
            (f"/api/comm/task/{task_id}/fail", b'{"lease_id":"%s","error":{"code":"x","message":"m","n":%s},"retryable":true}' % (lease.encode(), n)),
            (f"/api/comm/task/{task_id}/fail", b'{"lease_id":"%s","error":{"code":"x"},"retryable":true,"retry_after_s":%s}' % (lease.encode(), n)),
            (f"/api/comm/task/{task_id}/release", b'{"lease_id":"%s","x":%s}' % (lease.encode(), n)),
        ]:
            conn.refused("POST", path, body, 422, "non_finite_number")
    task = conn.json("GET", f"/api/tasks/{task_id}")
    assert (task["status"], task["attempts"], task["progress"]["percent"], task["output"]) == ("PROCESSING", 0, 0, None)
    conn.json("POST", f"/api/comm/task/{task_id}/complete", {"lease_id": lease, "output": {"data": "innocent"}})
    assert conn.json("GET", f"/api/tasks/{task_id}")["output"] == {"data": "innocent"}


def test_the_queue_is_not_poisoned(conn):
    """A refused task is never claimed: the innocent tasks fetched beside it are handed out
    once, in a 200, and complete; none is left PROCESSING with nobody holding it."""
    for n in NON_FINITE:
        conn.refused("POST", "/api/tasks", b'{"workflow":"echo","input":{"data":1},"metadata":{"x":%s}}' % n, 422, "non_finite_number")
    ids = [conn.json("POST", "/api/tasks", {"workflow": "echo", "input": {"data": i}})["task_id"] for i in range(3)]
    tasks = conn.json("GET", "/api/comm/task/fetch?wait_s=0&limit=10")["tasks"]
    assert sorted(t["task_id"] for t in tasks) == sorted(ids)
    for t in tasks:
        conn.json("POST", f"/api/comm/task/{t['task_id']}/complete", {"lease_id": t["lease"]["id"], "output": t["input"]})
        done = conn.json("GET", f"/api/tasks/{t['task_id']}")
        assert (done["status"], done["attempts"]) == ("COMPLETED", 1)


def test_finite_extremes_are_kept_as_sent(conn):
    data = [1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 10**30, "\u0000 kept inside JSON values", {"\u0000": 1}]
    task_id, lease = leased_task(conn, data)
    assert conn.json("GET", f"/api/tasks/{task_id}")["input"]["data"] == data
    conn.json("POST", f"/api/comm/task/{task_id}/complete", {"lease_id": lease, "output": {"data": data}})
    assert conn.json("GET", f"/api/tasks/{task_id}")["output"] == {"data": data}


async def test_the_queue_stores_no_non_finite_number(queue_db):
    """The last guard, below the HTTP boundary: a caller in process cannot store one either,
    and the refusal comes before the write."""
    queue = Queue(queue_db, Dispatcher(), lease_s=30)

    def spec(data):
        return {"workflow": "echo", "input": {"data": data}, "priority": 0, "max_attempts": 3, "timeout_s": 60,
                "webhook_url": None, "metadata": {}, "idempotency_key": None, "body_hash": None}  # fmt: skip

    try:
        with pytest.raises(ValueError):
            await queue.create(**spec(float("inf")))
        with pytest.raises(ValueError):
            await queue.create_many([spec(1), spec([float("nan")])])
        row, _ = await queue.create(**spec(1))
        (leased,) = await queue.claim(None, consumer_id="c", host=None, limit=10)
        with pytest.raises(ValueError):
            await queue.heartbeat(row["id"], leased["lease_id"], {"percent": float("nan"), "message": ""})
        with pytest.raises(ValueError):
            await queue.complete(row["id"], leased["lease_id"], {"v": float("-inf")})
        assert (await queue.complete(row["id"], leased["lease_id"], {"v": 1}))["status"] == "COMPLETED"
        rows, _ = await queue.list(status=None, workflow=None, limit=10, cursor=None)
        assert [(r["id"], r["output"]) for r in rows] == [(row["id"], '{"v":1}')]
    finally:
        await queue.aclose()


SURROGATES = [b'"\\ud800"', b'"\\udfff tail"', b'"\\ud83d"', b'"\xed\xa0\x80"', b'"\xff"']


def test_a_lone_surrogate_gets_invalid_json_on_every_body_route(conn):
    task_id, lease = leased_task(conn, 1)
    lease_b = lease.encode()
    task_b = task_id.encode()
    for s in SURROGATES:
        for path, body in [
            ("/api/tasks", b'{"workflow":"echo","input":{"data":%s}}' % s),
            ("/api/tasks/batch", b'{"tasks":[{"workflow":"echo","metadata":{"k":%s}}]}' % s),
            ("/api/echo/create-task", b'{"data":%s}' % s),
            ("/api/echo/process?wait_s=0", b'{"data":%s}' % s),
            (f"/api/comm/task/{task_id}/heartbeat", b'{"lease_id":"%s","progress":{"message":%s}}' % (lease_b, s)),
            (f"/api/comm/task/{task_id}/complete", b'{"lease_id":"%s","output":{%s:1}}' % (lease_b, s)),
            ("/api/comm/tasks/complete", b'{"items":[{"task_id":"%s","lease_id":"%s","output":%s}]}' % (task_b, lease_b, s)),
            (f"/api/comm/task/{task_id}/fail", b'{"lease_id":"%s","error":{"code":"x","message":%s},"retryable":false}' % (lease_b, s)),
            (f"/api/comm/task/{task_id}/release", b'{"lease_id":%s}' % s),
        ]:
            conn.refused("POST", path, body, 400, "invalid_json")
    assert conn.json("GET", "/api/tasks")["items"][0]["status"] == "PROCESSING"
    assert len(conn.json("GET", "/api/tasks")["items"]) == 1


def test_nul_in_any_string_parameter_is_refused(conn):
    task_id, lease = leased_task(conn, 1)
    bad = "a%00b"
    for method, path, body in [
        ("GET", f"/api/tasks/{bad}", None),
        ("POST", f"/api/tasks/{bad}/cancel", None),
        ("POST", f"/api/tasks/{bad}/retry", None),
        ("GET", f"/api/tasks?workflow={bad}", None),
        ("GET", f"/api/comm/task/fetch?wait_s=0&workflow={bad}", None),
        ("GET", f"/api/comm/task/fetch?wait_s=0&consumer_id={bad}", None),
        ("GET", f"/api/comm/task/fetch?wait_s=0&host={bad}", None),
        ("POST", f"/api/comm/task/{bad}/heartbeat", b'{"lease_id":"l"}'),
        ("POST", f"/api/comm/task/{bad}/complete", b'{"lease_id":"l"}'),
        ("POST", f"/api/comm/task/{bad}/fail", b'{"lease_id":"l","error":{"code":"x"},"retryable":false}'),
        ("POST", f"/api/comm/task/{bad}/release", b'{"lease_id":"l"}'),
        ("POST", f"/api/comm/task/{task_id}/heartbeat", b'{"lease_id":"l\\u0000"}'),
        ("POST", f"/api/comm/task/{task_id}/complete", b'{"lease_id":"\\u0000"}'),
        ("POST", f"/api/comm/task/{task_id}/fail", b'{"lease_id":"\\u0000","error":{"code":"x"},"retryable":false}'),
        ("POST", f"/api/comm/task/{task_id}/release", b'{"lease_id":"\\u0000"}'),
        ("POST", "/api/comm/tasks/complete", b'{"items":[{"task_id":"a\\u0000","lease_id":"l"}]}'),
        ("POST", "/api/comm/tasks/complete", b'{"items":[{"task_id":"%s","lease_id":"l\\u0000"}]}' % task_id.encode()),
        ("POST", "/api/tasks", b'{"workflow":"echo","idempotency_key":"k\\u0000"}'),
        ("POST", "/api/tasks", b'{"workflow":"ec\\u0000ho"}'),
        ("POST", "/api/tasks", b'{"workflow":"echo","webhook_url":"https://example.com/\\u0000"}'),
        ("POST", "/api/tasks/batch", b'{"tasks":[{"workflow":"echo","idempotency_key":"\\u0000"}]}'),
    ]:
        conn.refused(method, path, body, 422, "nul_character")
    # Nothing changed: the one leased task still completes under its lease.
    conn.json("POST", f"/api/comm/task/{task_id}/complete", {"lease_id": lease, "output": None})
    assert [t["status"] for t in conn.json("GET", "/api/tasks")["items"]] == ["COMPLETED"]


async def test_nul_in_the_idempotency_key_header_is_refused(database_url, tmp_path):
    # uvicorn's parser already turns a NUL in a header away; the app holds without it too.
    app = create_app(ApiSettings(database_url=database_url, storage_url=f"file://{tmp_path}/s"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            r = await http.post("/api/tasks", json={"workflow": "echo"}, headers={"idempotency-key": "k\x00"})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "nul_character")
            assert r.json()["error"]["details"][0]["loc"] == ["header", "idempotency-key"]
            r = await http.post("/api/tasks", json={"workflow": "echo"}, headers={"idempotency-key": "k" * 201})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
            assert (await http.get("/api/tasks")).json()["items"] == []
