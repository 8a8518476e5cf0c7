"""Pipeline definitions: multi-stage workflows written in YAML, loaded and checked at API start.

Definitions come from three places: the built-in ones shipped in this package (``*.yaml`` beside
this module), an operator's folder (``TASKFLEET_PIPELINES_DIR``, every ``*.yaml``) and other
packages' entry points in the ``taskfleet.pipelines`` group (each names a YAML file, a folder of
them, or a definition as a dict). Any fault stops the start with a ``PipelineLoadError`` whose one
line names the file and the fault. See docs/pipelines.md for the format.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path as FsPath
from typing import Any, Collection, Iterable

from taskfleet.errors import InvalidInput
from taskfleet.pipelines.templates import TemplateSyntaxError, paths_in

PIPELINE_GROUP = "taskfleet.pipelines"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
_PIPELINE_KEYS = {"name", "route", "description", "input", "stages", "output"}
_STAGE_KEYS = {"name", "workflow", "input", "after", "map", "max_attempts", "timeout_s"}


class PipelineLoadError(Exception):
    """One line: where the bad definition is, and what is wrong with it."""


class DefinitionError(ValueError):
    """What is wrong with one definition (its source is added by the loader)."""


@dataclass(frozen=True)
class Stage:
    name: str
    workflow: str
    input: Any
    after: tuple[str, ...]
    map: Any = None  # a template that renders to the list to fan out over; None = one task
    max_attempts: int | None = None
    timeout_s: float | None = None

    @property
    def mapped(self) -> bool:
        return self.map is not None


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]
    output: Any
    input_schema: dict[str, Any] | None = None
    route: str = ""
    description: str = ""
    source: str = ""
    # The pipeline task itself never holds a lease; these fill the task's columns.
    max_attempts: int = 1
    timeout_s: float = 0.0

    @property
    def alias(self) -> str:
        return self.route or self.name

    @property
    def input_fields(self) -> frozenset[str]:
        # The top-level names the input schema declares: an alias body's task options give way to them.
        return frozenset((self.input_schema or {}).get("properties", {}))

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def validate_input(self, data: Any) -> Any:
        """The input once it matches the pipeline's JSON Schema (422 otherwise), with the schema's
        top-level ``default``s filled in for absent keys, so templates can name optional inputs."""
        if self.input_schema is None:
            return data
        errors = sorted(_validator(json.dumps(self.input_schema, sort_keys=True)).iter_errors(data), key=lambda e: list(e.path))
        if errors:
            raise InvalidInput(
                f"input does not match pipeline {self.name!r}: {errors[0].message}",
                details=[{"loc": ["input", *e.path], "msg": e.message, "type": str(e.validator)} for e in errors],
            )
        properties = self.input_schema.get("properties")
        if isinstance(data, dict) and isinstance(properties, dict):
            defaults = {k: p["default"] for k, p in properties.items() if isinstance(p, dict) and "default" in p and k not in data}
            if defaults:
                return {**data, **json.loads(json.dumps(defaults))}  # a copy: the schema's own values stay untouched
        return data

    def to_json(self) -> dict[str, Any]:
        """The definition as stored with each pipeline task (read back by ``from_json``)."""
        return {
            "name": self.name,
            "stages": [
                {"name": s.name, "workflow": s.workflow, "input": s.input, "after": list(s.after), "map": s.map,
                 "max_attempts": s.max_attempts, "timeout_s": s.timeout_s}  # fmt: skip
                for s in self.stages
            ],
            "output": self.output,
        }


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


@functools.lru_cache(maxsize=256)
def from_json(text: str) -> Pipeline:
    """A stored definition snapshot, parsed once per distinct text."""
    raw = json.loads(text)
    return Pipeline(
        name=raw["name"],
        stages=tuple(
            Stage(s["name"], s["workflow"], s["input"], tuple(s["after"]), s["map"], s["max_attempts"], s["timeout_s"])
            for s in raw["stages"]
        ),
        output=raw["output"],
    )


def parse(raw: Any, workflows: Collection[str]) -> Pipeline:
    """Check one definition (a YAML document) against the known workflows; DefinitionError if bad."""
    if not isinstance(raw, dict):
        raise DefinitionError("a pipeline definition is a mapping with name and stages")
    unknown = set(raw) - _PIPELINE_KEYS
    if unknown:
        raise DefinitionError(f"unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_PIPELINE_KEYS))})")
    name = _name(raw.get("name"), "pipeline name")
    route = raw.get("route") or ""
    if route:
        _name(route, "route")
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise DefinitionError(f"pipeline {name!r} needs a non-empty list of stages")

    stages: list[Stage] = []
    for position, item in enumerate(raw_stages):
        stages.append(_stage(item, position, stages, workflows))
    names = [s.name for s in stages]
    for stage in stages:
        for dep in stage.after:
            if dep not in names:
                raise DefinitionError(f"stage {stage.name!r} runs after {dep!r}, which is not a stage of {name!r}")
    _check_acyclic(stages)
    ancestors = _ancestors(stages)
    for stage in stages:
        if stage.mapped:
            _check_templates(stage.map, f"stage {stage.name!r} map", stages, ancestors[stage.name], item_scope=False)
        _check_templates(stage.input, f"stage {stage.name!r} input", stages, ancestors[stage.name], item_scope=stage.mapped)
    output = raw.get("output")
    if output is None:
        last = stages[-1]
        output = f"{{{{ stages.{last.name}.{'outputs' if last.mapped else 'output'} }}}}"
    _check_templates(output, "output", stages, set(names), item_scope=False)

    schema = raw.get("input")
    if schema is not None:
        import jsonschema

        if not isinstance(schema, dict):
            raise DefinitionError("input must be a JSON Schema (a mapping)")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise DefinitionError(f"input is not a valid JSON Schema: {exc.message}") from None
    return Pipeline(
        name=name, stages=tuple(stages), output=output, input_schema=schema, route=route,
        description=str(raw.get("description") or ""),
    )  # fmt: skip


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise DefinitionError(f"{what} {value!r} is not a name (letters, digits, _ and -, starting with a letter)")
    return value


def _stage(item: Any, position: int, before: list[Stage], workflows: Collection[str]) -> Stage:
    if not isinstance(item, dict):
        raise DefinitionError(f"stage {position + 1} is not a mapping")
    unknown = set(item) - _STAGE_KEYS
    if unknown:
        raise DefinitionError(f"stage {item.get('name', position + 1)!r}: unknown key {sorted(unknown)[0]!r}")
    name = _name(item.get("name"), f"stage {position + 1} name")
    if any(s.name == name for s in before):
        raise DefinitionError(f"two stages are named {name!r}")
    workflow = item.get("workflow")
    if workflow not in workflows:
        raise DefinitionError(f"stage {name!r} uses unknown workflow {workflow!r}")
    after = item.get("after", [before[-1].name] if before else [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise DefinitionError(f"stage {name!r}: after is a list of stage names")
    max_attempts = item.get("max_attempts")
    if max_attempts is not None and (not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or not 1 <= max_attempts <= 100):
        raise DefinitionError(f"stage {name!r}: max_attempts must be an integer from 1 to 100")
    timeout_s = item.get("timeout_s")
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0):
        raise DefinitionError(f"stage {name!r}: timeout_s must be a positive number")
    return Stage(
        name=name, workflow=workflow, input=item.get("input", {}), after=tuple(dict.fromkeys(after)),
        map=item.get("map"), max_attempts=max_attempts, timeout_s=float(timeout_s) if timeout_s is not None else None,
    )  # fmt: skip


def _check_acyclic(stages: list[Stage]) -> None:
    after = {s.name: s.after for s in stages}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise DefinitionError(f"stages form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in after[name]:
            visit(dep, path + [name])
        state[name] = 2

    for stage in stages:
        visit(stage.name, [])


def _ancestors(stages: list[Stage]) -> dict[str, set[str]]:
    after = {s.name: s.after for s in stages}
    found: dict[str, set[str]] = {}

    def of(name: str) -> set[str]:
        if name not in found:
            found[name] = set()
            for dep in after[name]:
                found[name] |= {dep} | of(dep)
        return found[name]

    return {s.name: of(s.name) for s in stages}


def _check_templates(template: Any, where: str, stages: list[Stage], visible: set[str], *, item_scope: bool) -> None:
    by_name = {s.name: s for s in stages}
    try:
        paths = list(paths_in(template))
    except TemplateSyntaxError as exc:
        raise DefinitionError(f"{where}: bad template: {exc}") from None
    for path in paths:
        if path.root in ("item", "index") and not item_scope:
            raise DefinitionError(f"{where}: {{{{ {path.text} }}}} uses {path.root}, which only a mapped stage's input has")
        if path.root == "input" and len(path.steps) == 1:
            continue
        if path.root != "stages":
            continue
        if len(path.steps) < 3 or not isinstance(path.steps[1], str):
            raise DefinitionError(f"{where}: {{{{ {path.text} }}}} must be stages.<name>.output or stages.<name>.outputs")
        stage_name, field = path.steps[1], path.steps[2]
        if stage_name not in by_name:
            raise DefinitionError(f"{where}: {{{{ {path.text} }}}} refers to unknown stage {stage_name!r}")
        if stage_name not in visible:
            raise DefinitionError(f"{where}: {{{{ {path.text} }}}} uses stage {stage_name!r}, which it does not run after")
        wanted = "outputs" if by_name[stage_name].mapped else "output"
        if field != wanted:
            raise DefinitionError(f"{where}: {{{{ {path.text} }}}}: stage {stage_name!r} has {wanted}, not {field!r}")


# -- loading ---------------------------------------------------------------------------------
def load(workflows: Collection[str], directory: str | None = None) -> dict[str, Pipeline]:
    """Every pipeline: built-in, then the operator's folder, then entry points. Raises
    PipelineLoadError naming the file and the fault."""
    found: dict[str, Pipeline] = {}
    routes = {name: name for name in workflows}
    for source, text in _sources(directory):
        pipeline = _load_one(source, text, workflows)
        if pipeline.name in found or pipeline.name in workflows:
            raise PipelineLoadError(f"{source}: pipeline name {pipeline.name!r} is already taken")
        if pipeline.alias in routes:
            raise PipelineLoadError(f"{source}: route {pipeline.alias!r} is already used by {routes[pipeline.alias]!r}")
        routes[pipeline.alias] = pipeline.name
        found[pipeline.name] = pipeline
    return found


def _load_one(source: str, text: str | dict, workflows: Collection[str]) -> Pipeline:
    import yaml

    try:
        raw = yaml.safe_load(text) if isinstance(text, str) else text
        pipeline = parse(raw, workflows)
    except yaml.YAMLError as exc:
        raise PipelineLoadError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    except DefinitionError as exc:
        raise PipelineLoadError(f"{source}: {exc}") from None
    return Pipeline(**{**pipeline.__dict__, "source": source})


def _sources(directory: str | None) -> Iterable[tuple[str, str | dict]]:
    builtin = resources.files(__name__)
    yield from _yaml_files(builtin, f"{__name__} (built-in)")
    if directory:
        folder = FsPath(directory)
        if not folder.is_dir():
            raise PipelineLoadError(f"{directory}: TASKFLEET_PIPELINES_DIR is not a folder")
        yield from _yaml_files(folder, str(folder))
    for ep in entry_points(group=PIPELINE_GROUP):
        where = f"entry point {ep.name!r} ({ep.value})"
        try:
            target = ep.load()
        except Exception as exc:  # a broken plugin is one line at start, like a broken file
            raise PipelineLoadError(f"{where}: cannot be loaded: {type(exc).__name__}: {exc}") from None
        if isinstance(target, dict):
            yield where, target
        elif isinstance(target, (str, os.PathLike)) or hasattr(target, "read_text"):
            item = FsPath(target) if isinstance(target, (str, os.PathLike)) else target
            if item.is_dir():
                yield from _yaml_files(item, str(item))
            else:
                yield str(item), item.read_text()
        else:
            raise PipelineLoadError(f"{where}: must name a YAML file, a folder of them, or a definition dict")


def _yaml_files(folder: Any, label: str) -> Iterable[tuple[str, str]]:
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".yaml"):
            path = os.path.join(str(folder), item.name) if isinstance(folder, FsPath) else f"{label}/{item.name}"
            try:
                yield path, item.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise PipelineLoadError(f"{path}: cannot be read: {exc}") from None
