"""The three requests every task makes -- create, fetch, complete (with the next fetch) --
and the sync caller's ``POST /api/{route}/process``, served by their endpoints without FastAPI's
request machinery.

With tasks arriving one at a time, FastAPI's layers between uvicorn and an endpoint (routing,
dependency solving, the exception middleware, a Request object per layer) were about a quarter
of the API's CPU per task. Here a request for one of these routes is matched on its method and
path and handed to the same endpoint function the FastAPI route calls, after the same auth
check; the endpoint's errors get the app's own exception handlers, and anything else goes on
up to the server-error handler as it would from FastAPI.

What FastAPI would validate first (the fetch's query, the completions' and /process's bodies,
/process's ``wait_s``) is validated here
with the same constraints, and a request that does not pass as it stands goes on to FastAPI
untouched, its body replayed: the answer to a bad request is FastAPI's own. The FastAPI routes
stay where they are; they answer those requests, and they document all three in OpenAPI.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from task_api.auth import Authenticator
from task_api.body import parse_json
from task_api.routes_consumer import FETCH_WAIT_S
from task_api.routes_producer import PROCESS_WAIT_S
from task_api.schemas import CompleteMany, NextFetch
from taskfleet.errors import BadRequest, TaskfleetError

CREATE = ("POST", "/api/tasks")
FETCH = ("GET", "/api/comm/task/fetch")
COMPLETE_MANY = ("POST", "/api/comm/tasks/complete")
PROCESS = ("POST", "/api/{route}/process")
_PROCESS_PREFIX, _PROCESS_SUFFIX = "/api/", "/process"

# The fetch's query parameters, and which of them may repeat.
_FETCH_PARAMS = {"workflow", "consumer_id", "host", "limit", "wait_s", "wake_on_finish"}
_JSON_TYPES = {"application/json", "application/json; charset=utf-8"}
# A /process wait_s read here; any other spelling (an exponent, "inf", spaces) is FastAPI's to read.
_PLAIN_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")

Handler = Callable[[Request], Awaitable[Response]]


class _NotHere(Exception):
    """The request is not one this module answers as it stands: FastAPI's to answer, with the
    body read so far (if any) given back to it."""

    def __init__(self, body: bytes | None = None) -> None:
        self.body = body


class HotRoutes:
    """ASGI middleware in front of FastAPI's exception middleware and router."""

    def __init__(
        self, app: ASGIApp, *, routes: list[Any], auth: Authenticator, max_wait_s: float,
        max_process_wait_s: float, exception_handlers: dict[Any, Callable],
    ) -> None:
        self.app = app
        self.max_wait_s = max_wait_s
        self.max_process_wait_s = max_process_wait_s
        self.exception_handlers = exception_handlers  # the app's own dict, filled as handlers are added
        endpoints = {
            (method, route.path): route.endpoint
            for route in routes if isinstance(route, APIRoute) for method in route.methods
        }
        self._create = endpoints[CREATE]
        self._fetch = endpoints[FETCH]
        self._complete_many = endpoints[COMPLETE_MANY]
        self._process = endpoints[PROCESS]
        self._producer = auth.require("producer")
        self._consumer = auth.require("consumer")
        self._handlers: dict[tuple[str, str], Handler] = {
            CREATE: self.create, FETCH: self.fetch, COMPLETE_MANY: self.complete_many,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handlers.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if handler is None and scope["type"] == "http" and _is_process(scope["method"], scope["path"]):
            handler = self.process
        if handler is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except _NotHere as passed:
            await self.app(scope, receive if passed.body is None else _replay(passed.body, receive), send)
            return
        except Exception as exc:
            answer = self._handler_for(exc)
            if answer is None:
                raise  # the server-error handler's, as from FastAPI
            response = await answer(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable | None:
        # As Starlette's exception middleware looks it up; the handler for Exception itself
        # belongs to the server-error middleware outside this one.
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None

    # -- the routes ------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        await self._producer(request)
        return await self._create(request)  # it reads and checks its own body

    async def fetch(self, request: Request) -> Response:
        await self._consumer(request)
        query: dict[str, Any] = {"workflow": []}
        for name, value in parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True):
            if name == "workflow":
                query["workflow"].append(value)
            elif name not in _FETCH_PARAMS or name in query:
                raise _NotHere  # an unknown or repeated parameter: as FastAPI reads it
            else:
                query[name] = value
        query.setdefault("wait_s", min(FETCH_WAIT_S, self.max_wait_s))
        try:
            params = NextFetch.model_validate(query)
        except ValidationError:
            raise _NotHere from None
        if params.wait_s > self.max_wait_s:
            raise _NotHere
        return await self._fetch(
            request, workflow=params.workflow, consumer_id=params.consumer_id, host=params.host,
            limit=params.limit, wait_s=params.wait_s, wake_on_finish=params.wake_on_finish,
        )

    async def complete_many(self, request: Request) -> Response:
        await self._consumer(request)
        raw = await self._json_body(request)
        try:
            body = CompleteMany.model_validate(parse_json(raw))
        except (TaskfleetError, ValidationError):
            raise _NotHere(raw) from None
        return await self._complete_many(request, body)

    async def process(self, request: Request) -> Response:
        await self._producer(request)
        wait_s = min(PROCESS_WAIT_S, self.max_process_wait_s)
        params = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if params:
            if len(params) > 1 or params[0][0] != "wait_s" or not _PLAIN_NUMBER.fullmatch(params[0][1]):
                raise _NotHere
            wait_s = float(params[0][1])
            if wait_s > self.max_process_wait_s:
                raise _NotHere
        raw = await self._json_body(request)
        try:
            fields = parse_json(raw)
        except TaskfleetError:
            raise _NotHere(raw) from None
        if type(fields) is not dict:
            raise _NotHere(raw)
        route = request.scope["path"][len(_PROCESS_PREFIX):-len(_PROCESS_SUFFIX)]
        return await self._process(request, route=route, fields=fields, wait_s=wait_s)

    @staticmethod
    async def _json_body(request: Request) -> bytes:
        if request.headers.get("content-type", "application/json").lower() not in _JSON_TYPES:
            raise _NotHere
        try:
            return await request.body()
        except ClientDisconnect:  # as task_api.body answers it
            raise BadRequest("the client went away while sending its body") from None


def _is_process(method: str, path: str) -> bool:
    """``POST /api/{route}/process``, ``route`` one non-empty path segment (as FastAPI matches it)."""
    return (
        method == "POST" and path.startswith(_PROCESS_PREFIX) and path.endswith(_PROCESS_SUFFIX)
        and len(path) > len(_PROCESS_PREFIX) + len(_PROCESS_SUFFIX) and path.count("/") == 3
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for FastAPI, the body this module already read first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
