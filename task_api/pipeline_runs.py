"""Running pipelines on the queue: what a pipeline does when one of its stage tasks ends.

Everything here runs inside the pipeline's transaction (``Store.pipeline_transaction``), opened
by the queue around the state change that allows it: a stage's tasks are created, and the
pipeline ends, in the same commit as the completion that made it so. ``settle`` only reads the
committed state of the pipeline's stage tasks, so running it again changes nothing: the queue
calls it after every stage task's end, at create and at retry.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from task_api.producers import Producers
from task_api.store import Row, Store, sql
from taskfleet.errors import InvalidInput
from taskfleet.pipelines import Pipeline, Stage, from_json
from taskfleet.pipelines.templates import TemplateError, render

DONE_PROGRESS = {"percent": 100, "message": "done"}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class PipelineFault(Exception):
    """Why a stage could not start: ends the pipeline FAILED with this error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


@dataclass
class Effects:
    """What a pipeline transaction changed, for the signals the queue sends after its commit."""

    created: list[Row] = field(default_factory=list)  # new stage tasks, PENDING
    ended: Row | None = None  # the pipeline's row, where this transaction ended it
    restarted: list[Row] = field(default_factory=list)  # stage tasks a retry put back to PENDING


class PipelineRunner:
    def __init__(
        self, definitions: Mapping[str, Pipeline], workflows: Mapping[str, Any], max_fanout: int = 1000,
        *, producers: Producers | None = None,
    ) -> None:
        self.definitions = dict(definitions)
        self.producers = producers or Producers()  # stage tasks' fair-share steps: their pipeline's producer's
        self.workflows = workflows  # name → Workflow: stage input checks and per-workflow defaults
        self.max_fanout = max_fanout

    def is_pipeline(self, workflow: str) -> bool:
        return workflow in self.definitions

    def snapshot(self, workflow: str) -> str:
        return _dumps(self.definitions[workflow].to_json())

    async def settle(self, tx: Store, pipeline: Row, now: float, effects: Effects | None = None) -> Effects:
        """Bring a PROCESSING pipeline up to date with its stage tasks: end it if one failed or
        was cancelled; start every stage whose ``after`` stages are all COMPLETED; complete it
        when all stages are; else record its progress."""
        effects = effects or Effects()
        if pipeline["status"] != "PROCESSING":
            return effects
        definition = from_json(pipeline["pipeline_def"])
        started: list[str] = json.loads(pipeline["stages_started"])
        counts: dict[str, dict[str, int]] = {}
        usage: dict[str, float] = {}  # compute seconds by stage, for the pipeline's own usage
        for r in await tx.fetch(sql.STAGE_COUNTS, {"id": pipeline["id"]}):
            counts.setdefault(r["stage"], {})[r["status"]] = r["n"]
            usage[r["stage"]] = usage.get(r["stage"], 0.0) + float(r["compute_s"] or 0.0)

        if any(c.get("FAILED") or c.get("CANCELLED") for c in counts.values()):
            ended = await tx.fetchrow(sql.FIRST_ENDED_STAGE_TASK, {"id": pipeline["id"]})
            cause = json.loads(ended["error"]) if ended["error"] else {"code": "failed", "message": ""}
            failed = ended["status"] == "FAILED"
            error = {
                "code": "stage_failed" if failed else "stage_cancelled",
                "message": f"stage {ended['stage']!r} task {ended['id']} {'failed' if failed else 'was cancelled'}: {cause.get('message', '')}",
                "stage": ended["stage"], "task_id": ended["id"], "cause": cause,
            }  # fmt: skip
            return await self.end(tx, pipeline, "FAILED" if failed else "CANCELLED", now, error=error, effects=effects, usage=usage)

        scope: dict[str, Any] | None = None
        while True:
            done = {name for name in started if _stage_done(counts.get(name, {}))}
            ready = [s for s in definition.stages if s.name not in started and all(a in done for a in s.after)]
            if not ready:
                break
            if scope is None:
                scope = await self._scope(tx, pipeline, definition)
            for stage in ready:
                try:
                    params = self._stage_tasks(stage, pipeline, scope, now)
                except TemplateError as exc:
                    error = {
                        "code": "template_error", "retryable": False,
                        "message": f"stage {stage.name!r}: template path {exc.path!r} does not resolve ({exc.reason})",
                        "stage": stage.name, "path": exc.path,
                    }  # fmt: skip
                    return await self.end(tx, pipeline, "FAILED", now, error=error, effects=effects, started=started, usage=usage)
                except PipelineFault as exc:
                    return await self.end(tx, pipeline, "FAILED", now, error=exc.error, effects=effects, started=started, usage=usage)
                rows = await tx.insert_stage_tasks(params)
                effects.created.extend(rows)
                started.append(stage.name)
                counts[stage.name] = {"PENDING": len(rows)} if rows else {}
                if not rows:  # a map over nothing: done at once
                    scope["stages"][stage.name] = {"outputs": []}

        done = {name for name in started if _stage_done(counts.get(name, {}))}
        if all(s.name in done for s in definition.stages):
            scope = scope if scope is not None else await self._scope(tx, pipeline, definition)
            try:
                output = render(definition.output, scope)
            except TemplateError as exc:
                error = {
                    "code": "template_error", "retryable": False,
                    "message": f"output: template path {exc.path!r} does not resolve ({exc.reason})",
                    "stage": None, "path": exc.path,
                }  # fmt: skip
                return await self.end(tx, pipeline, "FAILED", now, error=error, effects=effects, started=started, usage=usage)
            return await self.end(tx, pipeline, "COMPLETED", now, output=output, effects=effects, started=started, usage=usage)

        progress = _progress(definition, started, counts)
        await tx.execute(
            sql.UPDATE_PIPELINE,
            {"id": pipeline["id"], "stages_started": _dumps(started), "progress": _dumps(progress), "now": now,
             **_usage_params(usage)},
        )
        return effects

    async def end(
        self,
        tx: Store,
        pipeline: Row,
        status: str,
        now: float,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        effects: Effects | None = None,
        started: list[str] | None = None,
        usage: dict[str, float] | None = None,
    ) -> Effects:
        """End the pipeline (its webhook queued in the same commit); any other end cancels its
        unfinished stage tasks. ``usage``: its stages' compute seconds, read here if not given."""
        effects = effects or Effects()
        if usage is None:
            usage = {}
            for r in await tx.fetch(sql.STAGE_COUNTS, {"id": pipeline["id"]}):
                usage[r["stage"]] = usage.get(r["stage"], 0.0) + float(r["compute_s"] or 0.0)
        progress = DONE_PROGRESS if status == "COMPLETED" else json.loads(pipeline["progress"])
        row = await tx.fetchrow(sql.END_PIPELINE, {
            "id": pipeline["id"], "status": status, "now": now, "progress": _dumps(progress),
            "output": _dumps(output) if status == "COMPLETED" else None,
            "error": _dumps(error) if error is not None else None,
            "stages_started": _dumps(started if started is not None else json.loads(pipeline["stages_started"])),
            **_usage_params(usage),
        })  # fmt: skip
        if row is None:
            return effects
        if status != "COMPLETED":
            await tx.execute(sql.CANCEL_STAGE_TASKS, {"id": pipeline["id"], "now": now})
        await tx.execute(sql.ENQUEUE_WEBHOOK, {"id": pipeline["id"], "now": now})
        effects.ended = row
        return effects

    async def _scope(self, tx: Store, pipeline: Row, definition: Pipeline) -> dict[str, Any]:
        """What templates read: the pipeline's input and each finished stage's output(s)."""
        mapped = {s.name for s in definition.stages if s.mapped}
        stages: dict[str, dict[str, Any]] = {}
        for r in await tx.fetch(sql.STAGE_OUTPUTS, {"id": pipeline["id"]}):
            output = json.loads(r["output"]) if r["output"] is not None else None
            if r["stage"] in mapped:
                stages.setdefault(r["stage"], {"outputs": []})["outputs"].append(output)
            else:
                stages[r["stage"]] = {"output": output}
        started = json.loads(pipeline["stages_started"])
        for name in mapped & set(started):
            stages.setdefault(name, {"outputs": []})  # an empty map
        return {"input": json.loads(pipeline["input"]), "stages": stages}

    def _stage_tasks(self, stage: Stage, pipeline: Row, scope: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """The insert parameters of a stage's tasks; raises TemplateError or PipelineFault."""
        workflow = self.workflows[stage.workflow]
        if stage.mapped:
            items = render(stage.map, scope)
            if not isinstance(items, list):
                raise TemplateError(_map_text(stage), f"map gave {type(items).__name__}, not a list")
            if len(items) > self.max_fanout:
                raise PipelineFault({
                    "code": "fanout_too_large", "retryable": False,
                    "message": f"stage {stage.name!r} maps over {len(items)} items; the limit is {self.max_fanout}",
                    "stage": stage.name, "items": len(items), "limit": self.max_fanout,
                })  # fmt: skip
            inputs = [(i, render(stage.input, {**scope, "item": item, "index": i})) for i, item in enumerate(items)]
        else:
            inputs = [(None, render(stage.input, scope))]
        params = []
        for index, data in inputs:
            try:
                checked = workflow.validate_input(data)
            except InvalidInput as exc:
                raise PipelineFault({
                    "code": "invalid_stage_input", "retryable": False,
                    "message": f"stage {stage.name!r}{'' if index is None else f' item {index}'}: {exc.message}",
                    "stage": stage.name, "details": exc.details,
                })  # fmt: skip
            params.append({
                "id": f"tsk_{uuid.uuid4().hex}", "workflow": stage.workflow, "input": _dumps(checked),
                "priority": pipeline["priority"],
                "max_attempts": stage.max_attempts or workflow.max_attempts,
                "timeout_s": float(stage.timeout_s or workflow.timeout_s),
                "metadata": pipeline["metadata"], "parent_id": pipeline["id"], "stage": stage.name,
                "item_index": index, "pending_ttl_s": pipeline["pending_ttl_s"], "producer": pipeline["producer"],
                "fair_step": self.producers.fair_step(pipeline["producer"]), "now": now,
            })  # fmt: skip
        return params


async def stages_view(store: Store, task_id: str) -> list[dict[str, Any]] | None:
    """The ``stages`` of GET /api/tasks/{id}, in definition order; None if not a pipeline."""
    pipeline = await store.fetchrow(sql.SELECT_PIPELINE, {"id": task_id})
    if pipeline is None or pipeline["id"] != task_id:
        return None
    definition = from_json(pipeline["pipeline_def"])
    started = set(json.loads(pipeline["stages_started"] or "[]"))
    tasks: dict[str, list[Row]] = {}
    for r in await store.fetch(sql.STAGE_TASKS, {"id": task_id}):
        tasks.setdefault(r["stage"], []).append(r)
    view = []
    for stage in definition.stages:
        rows = sorted(tasks.get(stage.name, []), key=lambda r: r["item_index"] if r["item_index"] is not None else -1)
        statuses = [r["status"] for r in rows]
        if stage.name not in started:
            status = "PENDING"
        elif "FAILED" in statuses:
            status = "FAILED"
        elif all(s == "COMPLETED" for s in statuses):
            status = "COMPLETED"
        elif "CANCELLED" in statuses and not any(s in ("PENDING", "PROCESSING") for s in statuses):
            status = "CANCELLED"
        else:
            status = "PROCESSING"
        view.append({
            "name": stage.name, "status": status, "task_ids": [r["id"] for r in rows],
            "completed": statuses.count("COMPLETED"), "total": len(rows),
        })  # fmt: skip
    return view


def _usage_params(usage: dict[str, float]) -> dict[str, Any]:
    """A pipeline's compute seconds (the sum of its stage tasks') and their split by stage."""
    return {"compute_s": round(sum(usage.values()), 6), "usage_by_stage": _dumps({k: round(v, 6) for k, v in usage.items()})}


def _stage_done(counts: dict[str, int]) -> bool:
    return sum(counts.values()) == counts.get("COMPLETED", 0)


def _progress(definition: Pipeline, started: list[str], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Each stage weighs the same; within a stage, each of its tasks. Never falls as tasks end."""
    share = 0.0
    for stage in definition.stages:
        if stage.name in started:
            c = counts.get(stage.name, {})
            total = sum(c.values())
            share += c.get("COMPLETED", 0) / total if total else 1.0
    done_tasks = sum(c.get("COMPLETED", 0) for c in counts.values())
    all_tasks = sum(sum(c.values()) for c in counts.values())
    percent = min(99, int(100 * share / len(definition.stages)))
    return {"percent": percent, "message": f"{done_tasks}/{all_tasks} stage tasks done"}


def _map_text(stage: Stage) -> str:
    return stage.map.strip("{} ") if isinstance(stage.map, str) else "map"
