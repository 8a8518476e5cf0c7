"""Postgres going away under real API replicas: 503 with a code (never 500), nothing accepted
lost or doubled, and the pool and the LISTEN connection back by themselves.

The restart and stop tests run a private cluster (tests/pg_cluster.py): the machine's shared
server serves other tests meanwhile. The ``pg_terminate_backend`` tests use the shared server,
and terminate only backends of the test's own, freshly made database.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import asyncpg
import httpx
import pytest

from pg_cluster import private_cluster
from support import PG_ADMIN_URL, api_process, postgres_database
from taskfleet.client import ApiTransport, ConsumerClient, ProducerClient
from taskfleet.errors import CommitUnknown, DatabaseUnavailable, TaskfleetError


class Recording(httpx.AsyncBaseTransport):
    """Below the clients' retry layers: every try's raw answer (status, error code) or error."""

    def __init__(self) -> None:
        self._inner = ApiTransport()
        self.seen: list[tuple[int, str | None] | str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.HTTPError as exc:
            self.seen.append(type(exc).__name__)
            raise
        code = None
        if response.status_code >= 400:
            await response.aread()
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "not-our-shape"
        self.seen.append((response.status_code, code))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def statuses(recordings: list[Recording]) -> Counter:
    return Counter(item if isinstance(item, str) else f"{item[0]} {item[1] or ''}".strip() for r in recordings for item in r.seen)


async def task_rows(url: str) -> list[dict]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch("SELECT id, status, metadata FROM tasks")]
    finally:
        await conn.close()


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_a_restart_under_load_answers_503_never_500_and_loses_or_doubles_nothing(tmp_path):
    with private_cluster() as cluster:
        env = {"TASKFLEET_LEASE_S": "30", "TASKFLEET_REAP_INTERVAL_S": "0.2"}
        with api_process(cluster.url, tmp_path / "a", **env) as a, api_process(cluster.url, tmp_path / "b", **env) as b:
            recordings: list[Recording] = []
            acknowledged: dict[str, str] = {}  # marker -> task id
            failed: list[str] = []
            completed: set[str] = set()
            stop = asyncio.Event()

            def recording() -> Recording:
                recordings.append(Recording())
                return recordings[-1]

            async def produce(replica, worker: int) -> None:
                async with ProducerClient(replica.url, transport=recording(), resend_for_s=30) as producer:
                    n = 0
                    while not stop.is_set():
                        marker = f"{worker}-{n}"
                        n += 1
                        try:
                            task = await producer.submit("echo", {"data": marker}, metadata={"marker": marker})
                        except (TaskfleetError, httpx.HTTPError) as exc:  # out of resends: not accepted
                            failed.append(f"{marker}: {exc!r}")
                            continue
                        acknowledged[marker] = task["task_id"]
                        await asyncio.sleep(0.01)

            async def consume(replica, worker: int) -> None:
                async with ConsumerClient(replica.url, consumer_id=f"c{worker}", transport=recording()) as consumer:
                    while not (stop.is_set() and set(acknowledged.values()) <= completed):
                        try:
                            for task in await consumer.fetch(["echo"], limit=8, wait_s=0.5):
                                await consumer.complete(task["task_id"], task["lease"]["id"], {"data": task["input"]["data"]})
                                completed.add(task["task_id"])
                        except (TaskfleetError, httpx.HTTPError):
                            await asyncio.sleep(0.2)  # the consumer's loops back off; so does this one

            health: list[int] = []

            async def probe() -> None:
                async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
                    while not stop.is_set():
                        for replica in (a, b):
                            health.append((await http.get(replica.url + "/health")).status_code)
                            ready = await http.get(replica.url + "/ready")
                            recordings[0].seen.append((ready.status_code, ready.json().get("error", {}).get("code")))
                        await asyncio.sleep(0.02)

            workers = [asyncio.create_task(produce(r, i)) for i, r in enumerate((a, b, a, b))]
            consumers = [asyncio.create_task(consume(r, i)) for i, r in enumerate((a, b))]
            await asyncio.sleep(0.1)
            probes = asyncio.create_task(probe())
            await asyncio.sleep(1.0)
            before = len(acknowledged)
            await asyncio.to_thread(cluster.restart)
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*workers, probes)
            await asyncio.wait_for(asyncio.gather(*consumers), 60)

            seen = statuses(recordings)
            rows = await task_rows(cluster.url.rsplit("/", 1)[0] + "/postgres")

    assert before > 0 and len(acknowledged) > before, "creates went on after the restart"
    assert not failed, failed
    # The restart reached requests (else this test showed nothing), and none answered 500.
    assert sum(n for key, n in seen.items() if key.startswith("503") or not key[0].isdigit()) > 0, seen
    assert not [key for key in seen if key.startswith("5") and not key.startswith("503")], seen
    assert all(key in ("503 database_unavailable", "503 commit_unknown") for key in seen if key.startswith("503")), seen
    assert set(health) == {200}
    markers = Counter(json.loads(row["metadata"])["marker"] for row in rows)
    assert all(n == 1 for n in markers.values()), [m for m, n in markers.items() if n > 1]  # nothing doubled
    by_id = {row["id"]: row for row in rows}
    assert all(task_id in by_id for task_id in acknowledged.values())  # nothing accepted lost
    assert set(markers) == set(acknowledged)
    assert {by_id[t]["status"] for t in acknowledged.values()} == {"COMPLETED"}


async def test_while_the_database_is_down_every_route_answers_503_and_all_comes_back(tmp_path):
    with private_cluster() as cluster:
        # A long reaper interval: a wake-up across replicas after the restart is LISTEN's doing.
        env = {"TASKFLEET_REAP_INTERVAL_S": "60"}
        with api_process(cluster.url, tmp_path / "a", **env) as a, api_process(cluster.url, tmp_path / "b", **env) as b:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                created = await http.post(a.url + "/api/tasks", json={"workflow": "echo", "input": {}})
                assert created.status_code == 201
                cluster.stop()
                answers = {
                    "ready": await http.get(a.url + "/ready"),
                    "create": await http.post(a.url + "/api/tasks", json={"workflow": "echo", "input": {}}),
                    "batch": await http.post(a.url + "/api/tasks/batch", json={"tasks": [{"workflow": "echo", "input": {}}]}),
                    "get": await http.get(a.url + f"/api/tasks/{created.json()['task_id']}"),
                    "list": await http.get(a.url + "/api/tasks"),
                    "fetch": await http.get(b.url + "/api/comm/task/fetch", params={"consumer_id": "c", "wait_s": 0}),
                    "heartbeat": await http.post(a.url + "/api/comm/task/tsk_x/heartbeat", json={"lease_id": "l"}),
                }
                for name, answer in answers.items():
                    assert answer.status_code == 503, (name, answer.text)
                    assert answer.json()["error"]["code"] == "database_unavailable", (name, answer.text)
                    assert answer.headers["retry-after"] == "1", name
                assert (await http.get(a.url + "/health")).status_code == 200
                down = (await http.get(b.url + "/metrics")).text  # the process's own metrics still answer
                assert metric(down, "taskfleet_listen_connected") == 0
                assert metric(down, "taskfleet_database_up") == 0

                cluster.start()
                deadline = time.monotonic() + 30
                while (await http.get(a.url + "/ready")).status_code != 200 or metric(
                    (await http.get(b.url + "/metrics")).text, "taskfleet_listen_connected"
                ) != 1:  # fmt: skip
                    assert time.monotonic() < deadline, "the replicas did not come back by themselves"
                    await asyncio.sleep(0.1)
                # Wake-ups across replicas resumed: a fetch parked on B hears of a create on A.
                fetch = asyncio.create_task(
                    http.get(b.url + "/api/comm/task/fetch", params={"consumer_id": "c", "wait_s": 20, "workflow": "echo"})
                )
                before_stop = await fetch
                assert before_stop.json()["tasks"][0]["task_id"] == created.json()["task_id"]  # still there
                parked = asyncio.create_task(
                    http.get(b.url + "/api/comm/task/fetch", params={"consumer_id": "c", "wait_s": 20, "workflow": "echo"})
                )
                await asyncio.sleep(0.3)
                fresh = await http.post(a.url + "/api/tasks", json={"workflow": "echo", "input": {}})
                got = await parked  # with the reaper's check a minute away, only a NOTIFY wakes it
                assert got.status_code == 200 and got.json()["tasks"][0]["task_id"] == fresh.json()["task_id"]


async def backends(database: str) -> dict[int, str]:
    """pid -> application_name of the backends connected to ``database`` (ours alone)."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await conn.fetch(
            "SELECT pid, application_name FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
        )
        return {r["pid"]: r["application_name"] for r in rows}
    finally:
        await conn.close()


async def admin(statement: str, *args) -> list:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


async def terminate(database: str, application_name: str) -> set[int]:
    """Terminate this test database's backends of one kind (never anyone else's)."""
    rows = await admin(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        database, application_name,
    )
    assert rows, f"no {application_name} backend to terminate"
    return {r["pid"] for r in rows}


async def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def listen_connected(http: httpx.AsyncClient, replica) -> float | None:
    return metric((await http.get(replica.url + "/metrics")).text, "taskfleet_listen_connected")


async def test_terminated_pool_and_listen_backends_come_back_by_themselves(tmp_path):
    with postgres_database() as url:
        database = url.rsplit("/", 1)[1]
        # No reaper pass for a minute: a wake-up across replicas below can only be a NOTIFY.
        env = {"TASKFLEET_REAP_INTERVAL_S": "60"}
        with api_process(url, tmp_path / "a", **env) as a, api_process(url, tmp_path / "b", **env) as b:
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                assert await listen_connected(http, a) == 1 and await listen_connected(http, b) == 1
                pool = await terminate(database, "taskfleet-api")
                listeners = await terminate(database, "taskfleet-listen")

                async def listeners_back() -> bool:
                    now = await backends(database)
                    fresh = [p for p, name in now.items() if name == "taskfleet-listen" and p not in listeners]
                    return len(fresh) == 2 and await listen_connected(http, a) == 1 and await listen_connected(http, b) == 1

                await wait_for(listeners_back, "the LISTEN connections did not come back")

                recording = Recording()
                async with ProducerClient(a.url, transport=recording) as producer:
                    parked = asyncio.create_task(
                        http.get(b.url + "/api/comm/task/fetch", params={"consumer_id": "c", "wait_s": 20, "workflow": "echo"})
                    )
                    await asyncio.sleep(0.3)
                    task = await producer.submit("echo", {"data": 1})
                    got = await parked
                    listed = await producer.list()
            assert got.status_code == 200 and got.json()["tasks"][0]["task_id"] == task["task_id"]
            assert [t["task_id"] for t in listed["items"]] == [task["task_id"]]
            # The pool replaced its terminated connections itself: nothing but answers, never a 500.
            assert {s for s in recording.seen} <= {(201, None), (200, None), (503, "database_unavailable")}, recording.seen
            now = await backends(database)
            assert any(name == "taskfleet-api" for name in now.values()) and not (pool & set(now))


async def test_a_replica_whose_listen_connection_is_lost_falls_back_to_its_timer(tmp_path):
    with postgres_database() as url:
        database = url.rsplit("/", 1)[1]
        # B's reaper checks for ready work every second: its fallback while LISTEN is away.
        with api_process(url, tmp_path / "a", TASKFLEET_REAP_INTERVAL_S="60") as a, api_process(
            url, tmp_path / "b", TASKFLEET_REAP_INTERVAL_S="1"
        ) as b:  # fmt: skip
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                # New connections to this database are refused: the LISTEN ones cannot come back
                # (the pools keep the connections they have).
                await admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                try:
                    await terminate(database, "taskfleet-listen")

                    async def lost() -> bool:
                        return await listen_connected(http, b) == 0

                    await wait_for(lost, "the lost LISTEN connection did not show in the metric")
                    parked = asyncio.create_task(
                        http.get(b.url + "/api/comm/task/fetch", params={"consumer_id": "c", "wait_s": 20, "workflow": "echo"})
                    )
                    await asyncio.sleep(0.3)
                    created = await http.post(a.url + "/api/tasks", json={"workflow": "echo", "input": {}})
                    got = await parked  # no NOTIFY reaches B now: its 1 s check finds the task
                    assert got.status_code == 200 and got.json()["tasks"][0]["task_id"] == created.json()["task_id"]
                    assert await listen_connected(http, b) == 0
                finally:
                    await admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

                async def back() -> bool:
                    return await listen_connected(http, b) == 1

                await wait_for(back, "the LISTEN connection did not come back")


class DroppingProxy:
    """A TCP proxy to the shared Postgres that, once armed, lets the next request through and
    drops the database's answer with the connection: a write the server ran and committed, whose
    confirmation never came back."""

    def __init__(self) -> None:
        self.armed = False
        self.dropped = 0

    async def __aenter__(self) -> str:
        host, port = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0].split(":")
        self._target = (host, int(port))
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)

        async def pump(reader, writer, answers: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if answers and self.armed:
                        self.armed = False
                        self.dropped += 1
                        break  # swallowed: the client never hears how its statement went
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                for w in (client_w, server_w):
                    w.close()

        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))


async def test_a_write_whose_answer_is_lost_is_commit_unknown_and_a_read_is_unavailable():
    from task_api.queue import Queue
    from task_api.store import PostgresStore
    from task_api.wakeup import Dispatcher
    from test_api_group_commit import spec

    with postgres_database() as url:
        proxy = DroppingProxy()
        async with proxy as address:
            store = PostgresStore(url.replace(url.split("@", 1)[1].split("/", 1)[0], address), min_size=1, max_size=1)
            await store.connect()
            queue = Queue(store, Dispatcher(), lease_s=30)
            try:
                await queue.create(**spec("first"))  # the insert is prepared on the one connection
                proxy.armed = True
                with pytest.raises(CommitUnknown):
                    await queue.create(**spec("lost"))
                assert proxy.dropped == 1
                await store.ping()  # the pool has a new connection, by itself
                proxy.armed = True
                with pytest.raises(DatabaseUnavailable):  # a read that lost its answer changed nothing
                    await queue.list(status=None, workflow=None, limit=10, cursor=None)
                assert proxy.dropped == 2
                rows = await queue.list(status=None, workflow=None, limit=10, cursor=None)
            finally:
                await queue.aclose()
                await store.close()
        # The "unknown" write did commit: exactly why it must not be answered as a plain failure.
        assert len(rows[0]) == 2
