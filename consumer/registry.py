"""Workflow name → processor, from the ``taskfleet.processors`` entry-point group.

A separately installed package adds a workflow without touching this repository: it declares its
``Workflow`` under ``taskfleet.workflows`` and its processor under ``taskfleet.processors``, both
with the workflow's name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable

from taskfleet.errors import ConfigError
from taskfleet.workflows import Workflow, WorkflowRegistry

PROCESSOR_GROUP = "taskfleet.processors"

Processor = Callable[[Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Runnable:
    """A workflow this consumer can run: its definition, its processor, the model servers it needs."""

    workflow: Workflow
    processor: Processor

    @property
    def name(self) -> str:
        return self.workflow.name

    @property
    def model_servers(self) -> tuple[str, ...]:
        """Kinds whose capacity gates fetching. A processor may name several (text_to_video needs
        tts and flux) with a ``model_servers`` attribute; otherwise the workflow's own kind."""
        declared = getattr(self.processor, "model_servers", None)
        if declared:
            return tuple(declared)
        if self.workflow.model_server:
            return tuple(k.strip() for k in self.workflow.model_server.split(",") if k.strip())
        return ()


def load_processors() -> dict[str, Processor]:
    found: dict[str, Processor] = {}
    for ep in entry_points(group=PROCESSOR_GROUP):
        fn = ep.load()
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"processor entry point {ep.name!r} ({ep.value}) must be an async function")
        found[ep.name] = fn
    return found


def resolve(
    wanted: list[str] | None,
    processors: dict[str, Processor] | None = None,
    workflows: WorkflowRegistry | None = None,
) -> dict[str, Runnable]:
    """The workflows to serve. Named ones must all be runnable; with none named, every workflow
    that has both a definition and a processor is served."""
    processors = load_processors() if processors is None else processors
    workflows = WorkflowRegistry.from_entry_points() if workflows is None else workflows
    names = list(wanted) if wanted else sorted(set(processors) & set(workflows.names()))
    runnable: dict[str, Runnable] = {}
    for name in names:
        if name not in processors:
            raise ConfigError(f"no processor is installed for workflow {name!r} (have: {', '.join(sorted(processors))})")
        if name not in workflows:
            raise ConfigError(f"no workflow definition is installed for {name!r}")
        runnable[name] = Runnable(workflows.get(name), processors[name])
    return runnable
