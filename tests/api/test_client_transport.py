"""The clients' aiohttp transport over real sockets: a connect that fails is resent, a request
the server received and then dropped is not (the server may have acted on it)."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from taskfleet.client import ConsumerClient, ProducerClient

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_dropped_after_the_request_went_out_is_not_resent():
    requests: list[bytes] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()  # read the request, then hang up without an answer

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, ProducerClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.cancel("tsk_1")  # not safe twice: the API may have acted on it
    assert len(requests) == 1
    assert requests[0].startswith(b"POST /api/tasks/tsk_1/cancel ")


async def test_a_create_dropped_mid_answer_is_resent_with_the_same_idempotency_key():
    bodies: list[dict] = []

    async def drop_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
        bodies.append(json.loads(await reader.readexactly(length)))
        if len(bodies) <= 2:
            writer.close()  # as a replica whose database restarted mid-commit
            return
        answer = b'{"task_id":"tsk_1","status":"PENDING"}'
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(drop_twice, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, ProducerClient(f"http://127.0.0.1:{port}", resend_for_s=10) as client:
        accepted = await client.submit("echo", {"n": 1})
        await client.submit("echo", {"n": 2})
    assert accepted == {"task_id": "tsk_1", "status": "PENDING"}
    keys = [b["idempotency_key"] for b in bodies]
    assert len(keys) == 4 and keys[0] == keys[1] == keys[2]  # one logical create: one key on every try
    assert keys[3] != keys[0] and keys[0].startswith("auto-")  # the next create gets its own


async def test_refused_connect_is_resent_until_the_api_listens():
    port = free_port()
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        writer.close()

    async def start_late() -> asyncio.Server:
        await asyncio.sleep(0.3)  # the first tries are refused
        return await asyncio.start_server(answer, "127.0.0.1", port)

    late = asyncio.create_task(start_late())
    async with ConsumerClient(f"http://127.0.0.1:{port}") as client:
        answer_body = await client.heartbeat("tsk_1", "lease_1")
    server = await late
    server.close()
    await server.wait_closed()
    assert answer_body == {}
    assert len(seen) == 1  # refused tries never reached anyone; the one that connected is the only one
