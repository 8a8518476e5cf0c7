"""Request bodies: one JSON parser, and one answer for what it refuses, on every route that reads one.

FastAPI reads a body with ``json.loads``, which lets through lone UTF-16 surrogates (text no
database or response can encode) and NaN / Infinity / 1e400 (numbers no JSON answer can carry):
both were stored, then failed later with a 500, some after a commit. Here a body is read once,
strictly, before anything else looks at it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Coroutine

import pydantic_core
from fastapi import params
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from taskfleet.errors import BadRequest, InvalidInput


def parse_json(raw: bytes) -> Any:
    """The body as JSON values, or the one answer for text that is not JSON we can keep:
    400 ``invalid_json`` (malformed, not UTF-8, a lone surrogate) or 422 ``non_finite_number``."""
    try:
        # jiter refuses invalid UTF-8 and lone surrogates; NaN / Infinity are let through only
        # so that they get the same answer as 1e400, which every parser turns into inf.
        value = pydantic_core.from_json(raw, allow_inf_nan=True)
    except ValueError:
        raise BadRequest("request body is not valid JSON", code="invalid_json") from None
    if not _all_finite(value):
        raise InvalidInput(
            "request body holds a number JSON cannot carry (NaN, Infinity, or out of range like 1e400)",
            code="non_finite_number",
        )
    return value


def _all_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return True


class _ParsedRequest(Request):
    """What FastAPI reads a JSON body from: ``json()`` answers what parse_json made of it."""

    parsed: Any = None

    async def json(self) -> Any:
        return self.parsed


class JsonBodyRoute(APIRoute):
    """A route whose JSON body goes through parse_json before FastAPI validates it.

    Refusals are raised before FastAPI's own body reading, which would turn any exception
    but its own into a bare 400. Routes without a body, and form uploads, are left as they are.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None or isinstance(self.body_field.field_info, params.Form):
            return handle

        async def parse_then_handle(request: Request) -> Response:
            parsed = _ParsedRequest(request.scope, request.receive)
            try:
                raw = await parsed.body()
            except ClientDisconnect:  # nobody reads the answer; FastAPI would give a bare 400
                raise BadRequest("the client went away while sending its body") from None
            if raw:
                parsed.parsed = parse_json(raw)
            return await handle(parsed)

        return parse_then_handle
