"""The ``fake_model`` workflow: optionally downloads an input, sends it to a ``fake`` model server,
stores the server's answer as an output. Lives outside the taskfleet repository's packages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskfleet.errors import TaskfleetError
from taskfleet.workflows import Workflow


class FakeModelInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = ""
    sleep_s: float = Field(0.0, ge=0, le=600)  # how long the model server takes
    source_url: str | None = None  # fetched by the consumer and uploaded to the server
    store: bool = True  # False: return the server's answer without writing an output (benchmarks)
    fail_attempts: int = 0  # fail (retryably) this many first attempts, after storing the output


PIPELINES = Path(__file__).parent / "pipelines"  # the taskfleet.pipelines entry point: a folder of YAML

FAKE_MODEL = Workflow(name="fake_model", input_model=FakeModelInput, model_server="fake", timeout_s=300)


async def process(ctx) -> dict[str, Any]:
    fields = {"text": ctx.input["text"], "sleep_s": ctx.input["sleep_s"]}
    await ctx.progress(5, "starting")
    if ctx.input.get("source_url"):
        path = await ctx.fetch_input(ctx.input["source_url"], "source.bin")
        with open(path, "rb") as fh:
            response = await ctx.model_server.request(
                "POST", "/process", data={k: str(v) for k, v in fields.items()}, files={"source": ("source.bin", fh)}
            )
    else:
        response = await ctx.model_server.request("POST", "/process", json=fields)
    answer = response.json()
    if not ctx.input["store"]:
        return {"text": ctx.input["text"], "files": answer["files"], "server_pid": answer["server_pid"]}
    result = ctx.workdir / "result.json"
    result.write_text(json.dumps({**answer, "attempt": ctx.attempt}))
    stored = await ctx.put_output(result, "result.json", "application/json")
    if ctx.attempt <= ctx.input["fail_attempts"]:
        raise TaskfleetError("failing this attempt on request", code="fake_flaky", retryable=True)
    return {
        "text": ctx.input["text"],
        "files": answer["files"],
        "server_pid": answer["server_pid"],
        "result_url": stored.url,
        "result_storage_url": stored.storage_url,
        "attempt": ctx.attempt,
    }
