"""The clients' aiohttp transport over real sockets: a connect that fails is resent, a request
the server received and then dropped is not (the server may have acted on it)."""

from __future__ import annotations

import asyncio
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
            await client.submit("echo", {})
    assert len(requests) == 1
    assert requests[0].startswith(b"POST /api/tasks ")


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
