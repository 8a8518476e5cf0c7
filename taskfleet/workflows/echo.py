"""The built-in ``echo`` workflow: returns its input; can sleep and fail on request (tests, demos)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskfleet.workflows import Workflow


class EchoInput(BaseModel):
    # Examples (here and in every workflow's input) are published in the task API's OpenAPI document.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"data": {"hello": "world"}}]})

    data: Any = None
    sleep_s: float = Field(0.0, ge=0, le=3600)
    fail: Literal["retryable", "fatal"] | None = None


class EchoOutput(BaseModel):
    data: Any = None


ECHO = Workflow(name="echo", input_model=EchoInput, output_model=EchoOutput, timeout_s=600.0)
