"""The task API's OpenAPI document: FastAPI's, plus what the routes cannot tell it.

The create routes read ``input`` as any object, because the workflow is only known from the body
(or the path); the document names each workflow's input and output schema, one create body per
workflow, the bearer scheme the routes check, and examples built from the workflows' own.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from taskfleet.workflows import Workflow, WorkflowRegistry

BEARER = "bearer"
REF = "#/components/schemas/"
TAGS = [
    {"name": "producer", "description": "Creating and reading tasks: a producer or an admin token."},
    {
        "name": "consumer",
        "description": "The consumers' long poll and lease-fenced writes: a consumer or an admin token.",
    },
    {
        "name": "admin",
        "description": "The fleet's consumers and per-workflow stats, and the operator console: an admin token.",
    },
    {
        "name": "console",
        "description": "The operator console at /ui: its page, static files and sign-in (an admin token, for a session cookie).",
    },
    {
        "name": "operations",
        "description": "Health, readiness, Prometheus metrics (`TASKFLEET_METRICS_TOKEN`, when set), local files.",
    },
]
DESCRIPTION = (
    "A pull-based task queue. Producers create tasks (`POST /api/tasks`, or the per-workflow "
    "`POST /api/{route}/create-task`), consumers lease and run them. Every error answers "
    '`{"error": {"code", "message"}}`. The full reference is docs/api.md in the repository.'
)


def install_openapi(app: FastAPI, workflows: WorkflowRegistry) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, workflows)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_document(app: FastAPI, workflows: WorkflowRegistry) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes, tags=TAGS)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <token>`, a token of `TASKFLEET_PRODUCER_TOKENS`, "
            "`TASKFLEET_CONSUMER_TOKENS` or `TASKFLEET_ADMIN_TOKENS` as the route's tag says; "
            "none configured: the API runs open, on loopback only.",
        }
    }
    _apply_security(doc)

    flows = sorted(workflows.all(), key=lambda wf: wf.name)
    names = _add_input_schemas(schemas, flows)
    creates, aliases = {}, {}
    for wf in flows:
        stem = _camel(wf.name)
        creates[wf.name] = _add(
            schemas, f"{stem}CreateTask", _create_body(schemas, schemas["CreateTask"], wf, names[wf.name])
        )
        aliases[wf.name] = _add(
            schemas, f"{stem}AliasBody", _alias_body(schemas, schemas["CreateTask"], names[wf.name])
        )
    create_any = {
        "oneOf": [{"$ref": REF + n} for n in creates.values()],
        "discriminator": {"propertyName": "workflow", "mapping": {w: REF + n for w, n in creates.items()}},
    }
    schemas["CreateTasks"]["properties"]["tasks"]["items"] = copy.deepcopy(create_any)

    examples = {wf.name: ex for wf in flows if (ex := _example(schemas[names[wf.name]])) is not None}
    by_alias = {wf.alias: wf for wf in flows}
    paths = doc["paths"]
    _set_body(paths["/api/tasks"]["post"], create_any, _create_examples(examples))
    _set_body(paths["/api/tasks/batch"]["post"], {"$ref": REF + "CreateTasks"}, {
        "two_tasks": {"summary": "two tasks in one transaction",
                      "value": {"tasks": [{"workflow": w, "input": ex} for w, ex in list(examples.items())[:2]]}},
    })  # fmt: skip
    alias_examples = {
        wf.alias: {
            "summary": f"POST /api/{wf.alias}/create-task",
            "value": {**examples[wf.name], **example_options(f"order-A-17-{wf.alias}-alias")},
        }
        for wf in flows
        if wf.name in examples
    }
    _set_body(
        paths["/api/{route}/create-task"]["post"],
        {"anyOf": [{"$ref": REF + n} for n in aliases.values()]},
        alias_examples,
    )
    process_examples = {
        wf.alias: {"summary": f"POST /api/{wf.alias}/process", "value": examples[wf.name]}
        for wf in flows
        if wf.name in examples
    }
    _set_body(
        paths["/api/{route}/process"]["post"],
        {"anyOf": [{"$ref": REF + names[wf.name]} for wf in flows]},
        process_examples,
    )
    for path in ("/api/{route}/create-task", "/api/{route}/process"):
        for param in paths[path]["post"]["parameters"]:
            if param["name"] == "route":
                param["schema"]["enum"] = sorted(by_alias)
                param["description"] = ", ".join(f"`{a}`: workflow `{wf.name}`" for a, wf in sorted(by_alias.items()))
    schemas["Task"]["properties"]["input"]["description"] = (
        "the workflow's input, as validated (see the *Input schemas)"
    )
    schemas["Task"]["properties"]["output"]["description"] = (
        "the workflow's output once COMPLETED (see the *Output schemas)"
    )
    return doc


def _apply_security(doc: dict[str, Any]) -> None:
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            tags = operation.get("tags", [])
            if "producer" in tags or "consumer" in tags or "admin" in tags:
                operation["security"] = [{BEARER: []}]
            elif path == "/metrics":
                operation["security"] = [{}, {BEARER: []}]  # a token only when TASKFLEET_METRICS_TOKEN is set
            else:
                operation["security"] = []


def _add_input_schemas(schemas: dict[str, Any], flows: list[Any]) -> dict[str, str]:
    """The component name of each workflow's input schema, by workflow name. A pipeline's input
    is the JSON Schema of its definition (any object when it declares none)."""
    models = [wf for wf in flows if isinstance(wf, Workflow)]
    by_model = _add_workflow_models(schemas, models)
    names = {wf.name: by_model[wf.input_model] for wf in models}
    for pipeline in flows:
        if not isinstance(pipeline, Workflow):
            schema = {"title": f"{pipeline.name} pipeline input", **(pipeline.input_schema or {"type": "object"})}
            names[pipeline.name] = _add(schemas, f"{_camel(pipeline.name)}PipelineInput", schema)
    return names


def _add_workflow_models(schemas: dict[str, Any], flows: list[Workflow]) -> dict[type[BaseModel], str]:
    """Every workflow's input and output model (and the models they use) as components; the
    component name of each. A name FastAPI already gave another schema gets a suffix."""
    models = {wf.input_model for wf in flows} | {wf.output_model for wf in flows if wf.output_model}
    keys, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF + "{model}"
    )
    defs = top.get("$defs", {})
    renamed = {name: _free_name(schemas, name, schema) for name, schema in defs.items()}
    rename = {REF + old: REF + new for old, new in renamed.items() if old != new}
    for old, new in renamed.items():
        schemas[new] = _rewrite_refs(defs[old], rename)
    return {model: rename.get(ref["$ref"], ref["$ref"])[len(REF) :] for (model, _), ref in keys.items()}


def _free_name(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> str:
    candidate, n = name, 1
    while candidate in schemas and schemas[candidate] != schema:
        n += 1
        candidate = f"{name}{n}"
    return candidate


def _rewrite_refs(value: Any, rename: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (rename.get(v, v) if k == "$ref" else _rewrite_refs(v, rename)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_refs(v, rename) for v in value]
    return value


def _add(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> str:
    name = _free_name(schemas, name, schema)
    schemas[name] = schema
    return name


def _create_body(schemas: dict[str, Any], create: dict[str, Any], wf: Any, input_name: str) -> dict[str, Any]:
    """The /api/tasks body for one workflow: ``workflow`` fixed, ``input`` that workflow's."""
    body = copy.deepcopy(create)
    body["title"] = f"CreateTask ({wf.name})"
    body["properties"]["workflow"] = {"type": "string", "const": wf.name, "title": "Workflow"}
    body["properties"]["input"] = {"$ref": REF + input_name}
    if schemas[input_name].get("required"):
        body["required"] = sorted({*body.get("required", []), "input"})
    return body


def _alias_body(schemas: dict[str, Any], create: dict[str, Any], input_name: str) -> dict[str, Any]:
    """The /api/{route}/create-task body: the input's fields, and the task options beside them
    (except where the input has a field of the same name: the input keeps it)."""
    body = copy.deepcopy(schemas[input_name])
    body["title"] = f"{input_name} with task options"
    properties = body.setdefault("properties", {})
    for name, schema in create["properties"].items():
        if name not in ("workflow", "input") and name not in properties:
            properties[name] = copy.deepcopy(schema)
    return body


def _example(schema: dict[str, Any]) -> dict[str, Any] | None:
    found = schema.get("examples")
    return found[0] if found else None


def example_options(idempotency_key: str) -> dict[str, Any]:
    """What a create body may carry beside the workflow and its input, as examples show it. Each
    example has a key of its own, so that trying every example creates every task."""
    return {
        "priority": 10,
        "webhook_url": "https://example.com/hooks/taskfleet",
        "metadata": {"order": "A-17"},
        "idempotency_key": idempotency_key,
    }


def _create_examples(examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {w: {"summary": f"a {w} task", "value": {"workflow": w, "input": ex}} for w, ex in examples.items()}
    if examples:
        w, ex = next(iter(examples.items()))
        out["with_options"] = {
            "summary": "priority, webhook, metadata and an idempotency key",
            "value": {"workflow": w, "input": ex, **example_options("order-A-17"), "max_attempts": 5, "timeout_s": 300},
        }
    return out


def _set_body(operation: dict[str, Any], schema: dict[str, Any], examples: dict[str, Any]) -> None:
    media = (
        operation.setdefault("requestBody", {"required": True})
        .setdefault("content", {})
        .setdefault("application/json", {})
    )
    media["schema"] = schema
    if examples:
        media["examples"] = examples


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))
