"""Pure logic of the consumer: settings, registry, fetch planning, TaskContext, the echo processor."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from consumer.context import TaskContext
from consumer.errors import ModelServerUnavailable, TaskCancelled
from consumer.model_client import HealthSnapshot
from consumer.processors.echo import process as echo
from consumer.registry import Runnable, resolve
from consumer.attempts import Running
from consumer.runner import Consumer
from consumer.settings import ConsumerSettings
from taskfleet.errors import ConfigError, TaskfleetError
from taskfleet.workflows import Workflow, WorkflowRegistry
from taskfleet.workflows.echo import ECHO


class NoInput(BaseModel):
    pass


async def _noop(ctx):
    return {}


FAKE = Workflow(name="fake", input_model=NoInput, model_server="fake")
CHAIN = Workflow(name="chain", input_model=NoInput, model_server="fake,other")


class NullClient:
    consumer_id = "test"

    async def aclose(self) -> None:
        pass


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("TASKFLEET_WORKFLOWS", "echo, face_swap")
    monkeypatch.setenv("TASKFLEET_TTS_URLS", "http://a:1, http://b:2")
    monkeypatch.setenv("TASKFLEET_MODEL_SERVER_URLS", '{"fake": ["http://f:3"]}')
    monkeypatch.setenv("TASKFLEET_MODEL_TIMEOUTS", '{"face_swap": 900}')
    monkeypatch.setenv("TASKFLEET_URL_ALLOWLIST", "10.0.0.0/8,files.internal")
    s = ConsumerSettings()
    assert s.workflows == ["echo", "face_swap"]
    assert s.server_urls() == {"fake": ["http://f:3"], "tts": ["http://a:1", "http://b:2"]}
    assert s.timeout_for("face_swap") == 900 and s.timeout_for("tts") == 120
    assert s.url_allowlist == ["10.0.0.0/8", "files.internal"]


def test_registry_resolution():
    workflows = WorkflowRegistry({"echo": ECHO, "fake": FAKE})
    processors = {"echo": echo, "fake": _noop, "orphan": _noop}
    assert set(resolve(None, processors, workflows)) == {"echo", "fake"}  # orphan has no definition
    assert resolve(["fake"], processors, workflows)["fake"].model_servers == ("fake",)
    with pytest.raises(ConfigError, match="no processor"):
        resolve(["tts"], processors, workflows)
    with pytest.raises(ConfigError, match="no workflow definition"):
        resolve(["orphan"], processors, workflows)
    assert Runnable(CHAIN, _noop).model_servers == ("fake", "other")


def test_builtin_echo_is_registered_through_entry_points():
    assert resolve(["echo"])["echo"].processor is echo


def test_missing_model_server_urls_refuse_to_start():
    with pytest.raises(ConfigError, match="fake"):
        Consumer(ConsumerSettings(), client=NullClient(), storage=object(), runnables={"fake": Runnable(FAKE, _noop)})


def test_cli_exits_2_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "--workflows", "no_such_workflow"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "no processor is installed for workflow 'no_such_workflow'" in result.stderr


async def test_fetch_plan_follows_slots_capacity_and_pauses():
    settings = ConsumerSettings(concurrency=4, model_server_urls={"fake": ["http://f:1"]})
    c = Consumer(
        settings, client=NullClient(), storage=object(),
        runnables={"echo": Runnable(ECHO, echo), "fake": Runnable(FAKE, _noop)},
    )
    ep = c.pools["fake"].endpoints[0]
    running = c.attempts.running
    assert c.capacity.plan(running) == (["echo"], 4)  # no health answer yet: only what needs no model server
    ep.health = HealthSnapshot(healthy=True, status="healthy", capacity=2, checked_at=time.monotonic())
    assert c.capacity.plan(running) == (["echo", "fake"], 2)  # one fetch may return any mix, so capacity caps it
    assert not c.capacity.held_by_ours
    running["t1"] = Running({"task_id": "t1"}, c.runnables["fake"], "l1")
    assert c.capacity.plan(running) == (["echo", "fake"], 1)
    running["t2"] = Running({"task_id": "t2"}, c.runnables["fake"], "l2")
    assert c.capacity.plan(running) == (["echo"], 2)  # the server is full: 2 of 4 slots left for echo
    assert c.capacity.held_by_ours  # full of our own tasks: the poll asks to end when one of ours does
    del running["t1"], running["t2"]
    c.capacity.pause(ModelServerUnavailable("down", kind="fake"))
    assert c.capacity.plan(running) == (["echo"], 4)  # paused after an outage release
    assert not c.capacity.held_by_ours
    ep.health.others_in_flight = 2  # other consumers fill it
    c.capacity.resume("fake")
    assert c.capacity.plan(running) == (["echo"], 4)
    assert not c.capacity.held_by_ours  # not ours: a lease of ours ending frees nothing there
    assert c.capacity.recheck_in is None  # nobody has seen it full of others at a /health check
    ep.full_of_others = 1  # a /health check found it so
    c.capacity.plan(running)
    assert c.capacity.recheck_in is not None and c.capacity.recheck_in <= 0.1  # the poll ends by its re-check
    await c.aclose()


def make_ctx(tmp_path: Path, **kw) -> TaskContext:
    return TaskContext(task_id="tsk_1", workflow="echo", input=kw.pop("input", {}), attempt=1,
                       workdir=tmp_path, storage=None, timeout_s=60, **kw)


async def test_progress_records_and_is_a_cancellation_point(tmp_path):
    cancelled = [False]
    ctx = make_ctx(tmp_path, _cancel_requested=lambda: cancelled[0])
    await ctx.progress(150, "over")
    assert (ctx._progress.percent, ctx._progress.message) == (100.0, "over")
    cancelled[0] = True
    with pytest.raises(TaskCancelled):
        await ctx.progress(50)


def test_input_names_cannot_escape_workdir(tmp_path):
    ctx = make_ctx(tmp_path / "w")
    (tmp_path / "w").mkdir()
    assert ctx._safe_path("sub/a.bin") == (tmp_path / "w" / "sub" / "a.bin").resolve()
    with pytest.raises(ValueError):
        ctx._safe_path("../outside.bin")


async def test_echo_processor(tmp_path):
    assert await echo(make_ctx(tmp_path, input={"data": [1, {"a": 2}]})) == {"data": [1, {"a": 2}]}
    with pytest.raises(TaskfleetError) as info:
        await echo(make_ctx(tmp_path, input={"fail": "fatal"}))
    assert (info.value.code, info.value.retryable) == ("echo_fatal", False)
    with pytest.raises(TaskfleetError) as info:
        await echo(make_ctx(tmp_path, input={"fail": "retryable"}))
    assert (info.value.code, info.value.retryable) == ("echo_retryable", True)
