"""Workflow definitions: one per workflow, used by the API to validate and by the consumer to run.

A definition says what a workflow accepts and returns; the consumer's processor (found in the
``taskfleet.processors`` entry-point group under the same name) says how it runs. Third-party
packages add workflows by declaring entries in ``taskfleet.workflows``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from taskfleet.errors import InvalidInput, NotFound

WORKFLOW_GROUP = "taskfleet.workflows"


@dataclass(frozen=True)
class Workflow:
    name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None = None
    route: str = ""  # alias in /api/{route}/create-task and /process; defaults to the name
    max_attempts: int = 3
    timeout_s: float = 600.0
    model_server: str | None = None  # which model-server kind the consumer needs capacity on

    @property
    def alias(self) -> str:
        return self.route or self.name

    @property
    def input_fields(self) -> frozenset[str]:
        return frozenset(self.input_model.model_fields)

    def validate_input(self, data: Any) -> dict[str, Any]:
        """Input as the processor will see it: validated, defaults filled, JSON-ready."""
        try:
            return self.input_model.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            raise InvalidInput(
                f"input does not match workflow {self.name!r}",
                details=exc.errors(include_url=False, include_context=False, include_input=False),
            ) from None


class WorkflowRegistry:
    def __init__(self, workflows: dict[str, Workflow]) -> None:
        self._by_name = dict(workflows)
        self._by_alias = {wf.alias: wf for wf in workflows.values()}

    @classmethod
    def from_entry_points(cls) -> "WorkflowRegistry":
        found: dict[str, Workflow] = {}
        for ep in entry_points(group=WORKFLOW_GROUP):
            wf = ep.load()
            if not isinstance(wf, Workflow) or wf.name != ep.name:
                raise TypeError(f"entry point {ep.name!r} must be a Workflow named {ep.name!r}")
            found[ep.name] = wf
        return cls(found)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Workflow:
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidInput(f"unknown workflow {name!r}", code="unknown_workflow") from None

    def by_alias(self, alias: str) -> Workflow:
        try:
            return self._by_alias[alias]
        except KeyError:
            raise NotFound(f"no workflow is routed at {alias!r}") from None

    def all(self) -> list[Workflow]:
        return list(self._by_name.values())
