"""/openapi.json, fetched from a running API: a valid OpenAPI 3.1 document that publishes each
workflow's input and output schema, the bearer scheme the routes check, and examples the API
itself accepts."""

from __future__ import annotations

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from support import api_process
from taskfleet import pipelines
from taskfleet.workflows import WorkflowRegistry

REF = "#/components/schemas/"
TOKEN = "openapi-producer"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    with api_process(f"sqlite:///{tmp / 'tasks.db'}", tmp, TASKFLEET_PRODUCER_TOKENS=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def doc(api):
    reply = httpx.get(api.url + "/openapi.json", trust_env=False)
    assert reply.status_code == 200
    return reply.json()


@pytest.fixture(scope="module")
def registry():
    return WorkflowRegistry.from_entry_points()


@pytest.fixture(scope="module")
def served(registry):
    """What producers can create: the workflows and the built-in pipelines, as the API registers them."""
    return WorkflowRegistry({**{wf.name: wf for wf in registry.all()}, **pipelines.load(registry.names(), None)})


def resolve(doc: dict, ref: str) -> dict:
    assert ref.startswith(REF), ref
    return doc["components"]["schemas"][ref[len(REF) :]]


def body_of(doc: dict, path: str) -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]


def validator(doc: dict, schema: dict) -> jsonschema.Draft202012Validator:
    # The schema sits beside the document's components, where its "#/components/..." references point.
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


ADMIN_PATHS = {"/api/consumers", "/api/stats", "/api/usage"}


def test_document_is_valid_openapi_with_a_bearer_scheme_on_the_token_routes(doc):
    validate(doc)
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                             "type": "http", "scheme": "bearer"}  # fmt: skip
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 19
    for path, method, op in operations:
        if path.startswith("/api/"):
            assert op["security"] == [{"bearer": []}], (method, path)
            kind = "consumer" if path.startswith("/api/comm/") else "admin" if path in ADMIN_PATHS else "producer"
            assert op["tags"] == [kind], (method, path)
            assert "401" in op["responses"] and "403" in op["responses"], (method, path)
        elif path == "/metrics":
            assert op["security"] == [{}, {"bearer": []}]
        else:
            assert op["security"] == [], (method, path)


def test_every_workflow_input_and_output_schema_is_published(doc, registry):
    create = body_of(doc, "/api/tasks")["schema"]
    mapping = create["discriminator"]["mapping"]
    assert create["discriminator"]["propertyName"] == "workflow"
    built_in = pipelines.load(registry.names(), None)
    assert set(mapping) == set(registry.names()) | set(built_in) and len(registry.names()) >= 4 and built_in
    assert sorted(r["$ref"] for r in create["oneOf"]) == sorted(mapping.values())
    batch = resolve(doc, body_of(doc, "/api/tasks/batch")["schema"]["$ref"])
    assert batch["properties"]["tasks"]["items"] == create
    alias_bodies = [resolve(doc, r["$ref"]) for r in body_of(doc, "/api/{route}/create-task")["schema"]["anyOf"]]
    process_inputs = {r["$ref"] for r in body_of(doc, "/api/{route}/process")["schema"]["anyOf"]}
    for wf in registry.all():
        body = resolve(doc, mapping[wf.name])
        assert body["properties"]["workflow"]["const"] == wf.name
        input_ref = body["properties"]["input"]["$ref"]
        published = resolve(doc, input_ref)
        own = wf.input_model.model_json_schema(ref_template=REF + "{model}")
        own.pop("$defs", None)
        assert published == own, wf.name
        assert input_ref in process_inputs, wf.name
        # The alias body: the input's fields and the task options of /api/tasks beside them.
        fields = set(own["properties"])
        assert any(set(b["properties"]) == fields | {"priority", "max_attempts", "timeout_s", "webhook_url",
                                                     "metadata", "idempotency_key", "expires_in_s"} for b in alias_bodies), wf.name  # fmt: skip
        if wf.output_model is not None:
            outputs = [s for s in doc["components"]["schemas"].values() if s.get("title") == wf.output_model.__name__]
            assert outputs and set(outputs[0]["properties"]) == set(wf.output_model.model_fields), wf.name
    # A pipeline's input is the JSON Schema of its definition, published as it is written.
    for pipeline in built_in.values():
        input_ref = resolve(doc, mapping[pipeline.name])["properties"]["input"]["$ref"]
        published = {k: v for k, v in resolve(doc, input_ref).items() if k != "title"}
        assert published == pipeline.input_schema, pipeline.name
        assert input_ref in process_inputs, pipeline.name
    for path in ("/api/{route}/create-task", "/api/{route}/process"):
        [route] = [p for p in doc["paths"][path]["post"]["parameters"] if p["name"] == "route"]
        assert route["schema"]["enum"] == sorted([*(wf.alias for wf in registry.all()), *(p.alias for p in pipelines.load(registry.names(), None).values())])
    for path in ("/api/tasks", "/api/{route}/create-task"):
        assert "idempotency-key" in [p["name"] for p in doc["paths"][path]["post"]["parameters"] if p["in"] == "header"]


def test_examples_match_their_schemas_and_the_api_accepts_them(api, doc, served):
    http = httpx.Client(base_url=api.url, headers={"authorization": f"Bearer {TOKEN}"}, trust_env=False)
    create = body_of(doc, "/api/tasks")
    assert set(create["examples"]) >= set(served.names()) | {"with_options"}
    for name, example in create["examples"].items():
        validator(doc, create["schema"]).validate(example["value"])
        reply = http.post("/api/tasks", json=example["value"])
        assert reply.status_code == 201, (name, reply.text)
        assert reply.json()["input"] == served.get(example["value"]["workflow"]).validate_input(
            example["value"]["input"]
        )
    batch = body_of(doc, "/api/tasks/batch")
    for example in batch["examples"].values():
        validator(doc, batch["schema"]).validate(example["value"])
        assert http.post("/api/tasks/batch", json=example["value"]).status_code == 201
    for path in ("/api/{route}/create-task", "/api/{route}/process"):
        body = body_of(doc, path)
        assert set(body["examples"]) == {wf.alias for wf in served.all()}
        for alias, example in body["examples"].items():
            validator(doc, body["schema"]).validate(example["value"])
            reply = http.post(path.replace("{route}", alias), params={"wait_s": 0}, json=example["value"])
            assert reply.status_code in (201, 202), (path, alias, reply.text)
    with_options = http.get(f"/api/tasks/{reply.json()['task_id']}").json()
    assert with_options["status"] == "PENDING"
