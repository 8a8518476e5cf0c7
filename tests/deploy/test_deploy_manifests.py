"""deploy/ checked against the code it deploys: settings names, entrypoints, probe routes and
ports, secrets, service URLs, drain periods, Pod Security "restricted", pinned images, the
images' lock files, and KEDA's two queue-depth triggers run for real (the postgresql query on a
migrated Postgres, the Prometheus selector on the API's /metrics).

No Docker engine runs where these tests run (deploy/README.md, "What the tests do not do"): the
Dockerfile is checked as text, and no image is built.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import deploy_model as dm
from consumer.settings import ConsumerSettings
from model_servers.face_swap.settings import FaceSwapSettings
from model_servers.flux.settings import FluxSettings
from model_servers.tts.settings import TtsSettings
from support import api_process, free_port, postgres_database
from task_api.settings import ApiSettings
from taskfleet.workflows import WorkflowRegistry

SETTINGS_BY_MODULE = {
    "task_api": ApiSettings,
    "consumer": ConsumerSettings,
    "model_servers.face_swap": FaceSwapSettings,
    "model_servers.face_swap.download": FaceSwapSettings,
    "model_servers.flux": FluxSettings,
    "model_servers.flux.download": FluxSettings,
    "model_servers.tts": TtsSettings,
}
ALL_SETTINGS = set(SETTINGS_BY_MODULE.values())
PREFIX = "TASKFLEET_"
NAME = re.compile(r"\bTASKFLEET_[A-Z0-9_]*[A-Z0-9]\b")
CONTAINERS = dm.all_containers()


def settings_field(cls, env_name: str) -> str | None:
    assert cls.model_config["env_prefix"] == PREFIX
    name = env_name[len(PREFIX):].lower() if env_name.startswith(PREFIX) else None
    return name if name in cls.model_fields else None


def test_every_yaml_file_parses_into_named_objects():
    paths = sorted(dm.DEPLOY.rglob("*.yaml")) + sorted(dm.DEPLOY.rglob("*.yml"))
    assert {p.name for p in paths} >= {"compose.yaml", "compose.gpu.yaml", "api.yaml", "consumers.yaml",
                                      "model-servers.yaml", "prometheus.yaml", "postgresql.yaml"}
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
    kinds = set()
    for path, doc in dm.k8s_documents():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: {doc}"
        assert doc["metadata"].get("name"), f"{path.name}: a {doc['kind']} without a name"
        kinds.add(doc["kind"])
    assert kinds >= {"Deployment", "Service", "Job", "ScaledObject", "TriggerAuthentication"}


def test_kubernetes_objects_match_the_kubernetes_schemas():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    unchecked = set()
    for path, doc in dm.k8s_documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields fail
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}") from None
    # Only the add-ons' custom resources have no built-in schema (KEDA, Prometheus Operator).
    assert unchecked == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor"}


def test_kustomization_lists_the_base_manifests():
    kustomization = yaml.safe_load((dm.K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in listed:
        assert (dm.K8S / name).is_file(), name
    # Every top-level manifest is applied by `kubectl apply -k`; keda/ and jobs/ are applied
    # by hand (one of the two KEDA files; jobs once).
    assert listed == {p.name for p in dm.K8S.glob("*.yaml")} - {"kustomization.yaml"}
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"] for _, d in dm.k8s_kind("Deployment") for c in dm.pod_spec(d)["containers"]}
    assert used <= images, used - images


def test_every_taskfleet_name_in_deploy_is_a_settings_field():
    unknown = {}
    for path in sorted(p for p in dm.DEPLOY.rglob("*") if p.is_file()):
        for name in set(NAME.findall(path.read_text(errors="replace"))):
            if not any(settings_field(cls, name) for cls in ALL_SETTINGS):
                unknown.setdefault(name, []).append(str(path.relative_to(dm.ROOT)))
    assert not unknown, f"names no settings class reads: {unknown}"


@pytest.mark.parametrize("container", CONTAINERS, ids=lambda c: c.where)
def test_each_process_is_given_only_names_its_own_settings_read(container):
    cls = SETTINGS_BY_MODULE.get(container.module)
    assert cls, f"{container.where}: runs {container.module}, which deploy tests do not know"
    stray = [n for n in container.env if n.startswith(PREFIX) and not settings_field(cls, n)]
    assert not stray, f"{container.where} ({container.module}, {cls.__name__}) ignores {stray}"


SECRET_STAND_INS = {"TASKFLEET_DATABASE_URL": "postgresql://taskfleet:from-a-secret@postgres/taskfleet"}


@pytest.mark.parametrize("container", CONTAINERS, ids=lambda c: c.where)
def test_each_process_accepts_the_values_it_is_given(container, monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in container.env.items():
        if name.startswith(PREFIX):
            # Values from Secrets or compose interpolation are opaque here: a stand-in of the
            # shape the setting checks.
            stand_in = SECRET_STAND_INS.get(name, "from-a-secret")
            monkeypatch.setenv(name, stand_in if value is dm.SECRET or value is None else value)
    settings = SETTINGS_BY_MODULE[container.module]()  # raises on a value the field rejects
    for name, value in container.env.items():
        field = settings_field(type(settings), name)
        if field and isinstance(value, str) and "${" not in value and value.isdigit():
            assert getattr(settings, field) == int(value), f"{container.where}: {name}"


@pytest.mark.parametrize("module", sorted({c.module for c in CONTAINERS}))
def test_entrypoint_modules_exist_and_have_main(module):
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    target = module + ".__main__" if spec.submodule_search_locations else module
    source = Path(importlib.util.find_spec(target).origin).read_text()
    assert "def main(" in source and '__name__ == "__main__"' in source, f"python -m {module} runs nothing"


def test_dockerfile_final_images_run_as_non_root_with_a_healthcheck():
    stages = dm.dockerfile_stages()
    finals = {name: s for name, s in stages.items() if s.entrypoint}
    assert set(finals) == {"api", "consumer", "face-swap", "flux", "tts"}
    for name, stage in finals.items():
        assert stage.user and stage.user not in ("root", "0"), f"{name} runs as root"
        assert stage.healthcheck, f"{name} has no HEALTHCHECK"
    text = dm.DOCKERFILE.read_text()
    assert set(stages["face-swap-build"].args) == {"ACCELERATOR"}
    assert "espeak-ng" in re.search(r"FROM runtime-base AS tts\n(.*?)(?:\n\n|\Z)", text, re.S)[1]


def test_fleet_image_copies_no_model_server_source():
    """The API and consumer never import model_servers/ (test_fleet_runs_without_model_runtimes),
    so their image does not carry it."""
    copied = [rest.split()[:-1] for word, rest in dm.stage_instructions("fleet-build") if word == "COPY"]
    sources = {src.rstrip("/") for srcs in copied for src in srcs}
    assert {"taskfleet", "task_api", "consumer", "storage"} <= sources
    assert not any(src.startswith("model_servers") or src.startswith("--from") for src in sources), sources


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    allowed = {line[1:].rstrip("/") for line in (dm.DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    stages = dm.dockerfile_stages()
    sources = []
    for name in stages:
        for word, rest in dm.stage_instructions(name):
            if word == "COPY" and "--from=" not in rest:
                # A build argument in a path: the default and every file the pattern names.
                for source in rest.split()[:-1]:
                    for arg, default in stages[name].args.items():
                        assert f"${{{arg}}}" not in source or (dm.ROOT / source.replace(f"${{{arg}}}", default)).exists(), source
                        source = source.replace(f"${{{arg}}}", "*")
                    sources.append(source)
    assert len(sources) >= 12
    for source in sources:
        parents = [source.rstrip("/")] + ["/".join(source.split("/")[:i]) for i in range(1, source.count("/") + 1)]
        assert any(p in allowed for p in parents), f"COPY {source}: excluded by deploy/Dockerfile.dockerignore"
        assert list(dm.ROOT.glob(source)), f"COPY {source}: no such path"
    # The package's own layout: every package setuptools installs is copied.
    import tomllib

    include = tomllib.loads((dm.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} <= {s.rstrip("/") for s in sources}


def test_compose_build_targets_exist_in_the_dockerfile():
    stages = dm.dockerfile_stages()
    for file_name, services in dm.compose_services().items():
        for name, service in services.items():
            target = (service.get("build") or {}).get("target")
            if target:
                assert target in stages, f"{file_name} {name}: no Dockerfile stage {target}"
                assert stages[target].entrypoint, f"{file_name} {name}: {target} is not a runnable stage"


def _listen_port(container: dm.Container) -> int:
    cls = SETTINGS_BY_MODULE[container.module]
    value = container.env.get("TASKFLEET_PORT")
    return int(value) if isinstance(value, str) else cls.model_fields["port"].default


async def _route_status(module: str, path: str, tmp_path: Path) -> int:
    if module == "task_api":
        from task_api.app import create_app

        app = create_app(ApiSettings(database_url=f"sqlite:///{tmp_path}/t.db", storage_url=f"file://{tmp_path}/s"))
    else:
        app_module = importlib.import_module(module + ".app")
        app = app_module.create_app(SETTINGS_BY_MODULE[module]())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://probe") as client:
        return (await client.get(path)).status_code


async def test_probes_hit_routes_the_apps_serve_on_the_ports_they_listen_on(tmp_path):
    seen = {}
    probed = [(c, p) for c in CONTAINERS for p in c.probes]
    assert len(probed) >= 20
    for container, probe in probed:
        if container.module == "consumer":
            # The consumer's only HTTP server is its Prometheus endpoint.
            assert probe.path == "/metrics", container.where
            assert probe.port == int(container.env["TASKFLEET_METRICS_PORT"]), container.where
            continue
        assert probe.port == _listen_port(container), f"{container.where}: probes {probe.port}, serves {_listen_port(container)}"
        if container.declared_ports:
            assert probe.port in container.declared_ports, container.where
        key = (container.module, probe.path)
        if key not in seen:
            seen[key] = await _route_status(container.module, probe.path, tmp_path)
        # Without its lifespan the API's /ready answers 503 (no database yet); a path the app
        # does not serve would be 404 and a wrong method 405.
        assert seen[key] not in (404, 405), f"{container.where}: GET {probe.path} -> {seen[key]}"
    assert seen[("task_api", "/health")] == 200
    assert seen[("task_api", "/ready")] == 503
    for kind in ("face_swap", "flux", "tts"):
        assert seen[(f"model_servers.{kind}", "/health")] == 200


def test_consumer_metrics_endpoint_answers_where_the_probe_looks():
    from consumer.metrics import Metrics

    server = Metrics().serve("127.0.0.1", 0)
    try:
        reply = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", trust_env=False)
    finally:
        server.shutdown()
        server.server_close()
    assert reply.status_code == 200 and "taskfleet_consumer_in_flight" in reply.text


def test_consumers_get_longer_to_stop_than_they_take_to_drain():
    defaults = ConsumerSettings.model_fields

    def drain_s(env: dict) -> float:
        grace = env.get("TASKFLEET_SHUTDOWN_GRACE_S") or defaults["shutdown_grace_s"].default
        fetch = env.get("TASKFLEET_FETCH_WAIT_S") or defaults["fetch_wait_s"].default
        return float(grace) + float(fetch)

    deployments = [(p, d) for p, d in dm.k8s_kind("Deployment") if d["spec"]["template"]["spec"]["containers"][0].get("command", [])[-1:] == ["consumer"]]
    assert len(deployments) == 3
    for _, doc in deployments:
        spec = dm.pod_spec(doc)
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert spec["terminationGracePeriodSeconds"] > drain_s(env), doc["metadata"]["name"]
    service = dm.compose_services()["compose.yaml"]["consumer"]
    assert dm.compose_duration_s(service["stop_grace_period"]) > drain_s(service["environment"])


def _longest_request_s(env: dict) -> float:
    """The longest request the API holds open: a consumer's long poll or a /process wait."""
    defaults = ApiSettings.model_fields
    return max(float(env.get(f"TASKFLEET_{name.upper()}") or defaults[name].default)
               for name in ("max_wait_s", "max_process_wait_s"))  # fmt: skip


def test_the_api_gets_longer_to_stop_than_its_longest_long_poll():
    """On SIGTERM uvicorn lets open requests finish; killed sooner, a long-polling consumer or a
    /process caller is cut off mid-wait."""
    apis = [d for _, d in dm.k8s_kind("Deployment") if dm.pod_spec(d)["containers"][0]["command"][-1] == "task_api"]
    assert len(apis) == 1
    for doc in apis:
        spec = dm.pod_spec(doc)
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert spec["terminationGracePeriodSeconds"] > _longest_request_s(env), doc["metadata"]["name"]
    service = dm.compose_services()["compose.yaml"]["api"]
    env = {k: str(v) for k, v in service["environment"].items() if k.startswith("TASKFLEET_")}
    assert "stop_grace_period" in service, "compose's default is 10 s"
    assert dm.compose_duration_s(service["stop_grace_period"]) > _longest_request_s(env)


def test_no_manifest_creates_a_secret():
    """A placeholder Secret applied by `kubectl apply -k` would run the fleet on "change-me"
    tokens; operators create the Secrets themselves (deploy/README.md)."""
    rendered = dm.render_kustomization()
    assert {d["kind"] for d in rendered} >= {"Namespace", "Deployment", "Service", "PersistentVolumeClaim"}
    assert [d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"] == []
    assert [f"{p.name}: {d['metadata']['name']}" for p, d in dm.k8s_kind("Secret")] == []


def test_every_secret_reference_resolves():
    secrets = dm.documented_secrets()
    assert {"taskfleet-tokens", "taskfleet-database", "taskfleet-storage", "taskfleet-keda-postgres"} <= set(secrets)
    refs = []
    for path, doc in dm.k8s_documents():
        if doc["kind"] in ("Deployment", "Job"):
            for c in dm.pod_spec(doc)["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.append((path.name, ref["name"], ref["key"]))
        elif doc["kind"] == "TriggerAuthentication":
            refs += [(path.name, r["name"], r["key"]) for r in doc["spec"]["secretTargetRef"]]
        elif doc["kind"] == "ServiceMonitor":
            for endpoint in doc["spec"]["endpoints"]:
                cred = endpoint.get("authorization", {}).get("credentials")
                if cred:
                    refs.append((path.name, cred["name"], cred["key"]))
    assert len(refs) >= 10
    for where, name, key in refs:
        assert key in secrets.get(name, set()), f"{where}: deploy/README.md creates no Secret {name} with key {key}"
    # Tokens never sit in a manifest as plain values.
    for container in dm.k8s_containers():
        for name, value in container.env.items():
            if name.endswith(("_TOKEN", "_TOKENS", "_DATABASE_URL")):
                assert value is dm.SECRET, f"{container.where}: {name} is not taken from a Secret"


def test_consumers_present_a_token_the_api_accepts():
    def refs(name: str) -> set[str]:
        found = set()
        for _, doc in dm.k8s_kind("Deployment"):
            for c in dm.pod_spec(doc)["containers"]:
                for e in c.get("env", []):
                    if e["name"] == name:
                        ref = e["valueFrom"]["secretKeyRef"]
                        found.add(f"{ref['name']}/{ref['key']}")
        return found

    assert refs("TASKFLEET_CONSUMER_TOKEN") == refs("TASKFLEET_CONSUMER_TOKENS") != set()
    services = dm.compose_services()["compose.yaml"]
    given = services["consumer"]["environment"]["TASKFLEET_CONSUMER_TOKEN"]
    accepted = services["api"]["environment"]["TASKFLEET_CONSUMER_TOKENS"]
    assert re.match(r"\$\{(\w+)", given)[1] == re.match(r"\$\{(\w+)", accepted)[1]


def _k8s_listening_ports() -> dict[str, tuple[dict, dict[str, int]]]:
    """Deployment pod labels and named container ports, by Deployment name."""
    out = {}
    for _, doc in dm.k8s_kind("Deployment"):
        ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for c in dm.pod_spec(doc)["containers"] for p in c.get("ports", [])}
        out[doc["metadata"]["name"]] = (doc["spec"]["template"]["metadata"]["labels"], ports)
    return out


def test_service_urls_reach_a_listening_container():
    deployments = _k8s_listening_ports()
    services = {d["metadata"]["name"]: d for _, d in dm.k8s_kind("Service")}
    urls = [(c, m) for c in dm.k8s_containers() for v in c.env.values() if isinstance(v, str)
            for m in re.finditer(r"http://([a-z0-9-]+):(\d+)", v)]
    assert len(urls) >= 6
    for container, match in urls:
        host, port = match[1], int(match[2])
        service = services.get(host)
        assert service, f"{container.where}: no Service {host}"
        entry = next((p for p in service["spec"]["ports"] if p["port"] == port), None)
        assert entry, f"{container.where}: Service {host} has no port {port}"
        selected = [(labels, ports) for labels, ports in deployments.values()
                    if service["spec"]["selector"].items() <= labels.items()]
        assert selected, f"Service {host} selects no Deployment"
        for _, ports in selected:
            target = entry["targetPort"]
            assert (ports.get(target) if isinstance(target, str) else target) in ports.values(), f"Service {host}: {target}"
    # compose: a URL's host is a service and its port the one that service's process listens on.
    compose = {c.where.split()[-1]: c for c in dm.compose_containers() if c.where.startswith("compose.yaml")}
    services_c = dm.compose_services()["compose.yaml"]
    for container in compose.values():
        for value in container.env.values():
            for match in re.finditer(r"http://([a-z0-9-]+):(\d+)", value or ""):
                host, port = match[1], int(match[2])
                if host in ("localhost", "127.0.0.1"):  # a link for the host's browser: a published port
                    published = [p for svc in services_c.values() for p in svc.get("ports", [])]
                    assert any(str(p).split(":")[-2] == str(port) for p in published), f"{container.where}: {value}"
                    continue
                assert host in services_c, f"{container.where}: no compose service {host}"
                if host in compose:
                    assert port == _listen_port(compose[host]), f"{container.where}: {host} listens on {_listen_port(compose[host])}"


async def test_storage_urls_open_and_compose_links_are_readable():
    from storage import open_storage

    services = dm.compose_services()["compose.yaml"]
    url = services["api"]["environment"]["TASKFLEET_STORAGE_URL"]
    assert services["consumer"]["environment"]["TASKFLEET_STORAGE_URL"] == url  # one bucket for both
    storage = open_storage(url)
    key = storage.output_key("echo", "tsk_1", "out.txt")
    link = await storage.url_for(key)
    assert storage.key_for_url(link) == key  # consumers read their own links straight from the bucket
    # The link is on MinIO's published port, under the prefix minio-init made readable.
    host_port = re.match(r"http://localhost:(\d+)/", link)[1]
    assert f"127.0.0.1:{host_port}:9000" in services["minio"]["ports"]
    bucket_path = link.split(f"localhost:{host_port}/", 1)[1].rsplit("/echo/", 1)[0]
    assert f"mc anonymous set download local/{bucket_path}" in services["minio-init"]["entrypoint"][-1]
    assert open_storage(dm.documented_literal("taskfleet-storage", "url")).provider == "s3"


def _scaled_objects(file_name: str) -> dict[str, dict]:
    docs = [d for p, d in dm.k8s_kind("ScaledObject") if p.name == file_name]
    return {d["metadata"]["name"]: d for d in docs}


PROM_QUERY = re.compile(r'^sum\(max by \(status\) \((taskfleet_tasks\{[^}]*\})\)\) or vector\(0\)$')
SELECTOR = re.compile(r"^(\w+)\{(.*)\}$")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _matchers(selector: str) -> tuple[str, list[tuple[str, str, str]]]:
    m = SELECTOR.match(selector)
    assert m, selector
    return m[1], MATCHER.findall(m[2])


def _matches(labels: dict, matchers) -> bool:
    for name, op, value in matchers:
        actual = labels.get(name, "")
        ok = {"=": actual == value, "!=": actual != value,
              "=~": re.fullmatch(value, actual) is not None, "!~": re.fullmatch(value, actual) is None}[op]
        if not ok:
            return False
    return True


def _workflows_of_prometheus(query: str) -> set[str]:
    m = PROM_QUERY.match(query)
    assert m, f"unexpected query shape (the test evaluates exactly this shape): {query}"
    _, matchers = _matchers(m[1])
    wf = [v for n, op, v in matchers if n == "workflow"]
    assert len(wf) == 1
    return set(wf[0].split("|"))


def _workflows_of_sql(query: str) -> set[str]:
    m = re.search(r"workflow IN \(([^)]*)\)", query)
    assert m, query
    return {w.strip().strip("'") for w in m[1].split(",")}


@functools.cache
def _registry() -> WorkflowRegistry:
    return WorkflowRegistry.from_entry_points()


def _served_workflows(target: str) -> set[str]:
    """What a scale target's pods work on: a consumer's TASKFLEET_WORKFLOWS, a model server's workflows."""
    registry = _registry()
    for _, doc in dm.k8s_kind("Deployment"):
        if doc["metadata"]["name"] != target:
            continue
        container = dm.pod_spec(doc)["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "TASKFLEET_WORKFLOWS" in env:
            return set(env["TASKFLEET_WORKFLOWS"].split(","))
        kind = container["command"][-1].rsplit(".", 1)[-1]
        return {w.name for w in registry.all() if w.model_server == kind}
    raise AssertionError(f"no Deployment {target}")


def test_scaled_objects_target_deployments_on_the_workflows_they_serve():
    registry_names = {w.name for w in _registry().all()}
    deployments = {d["metadata"]["name"] for _, d in dm.k8s_kind("Deployment")}
    consumers = {n for n in deployments if n.startswith("consumer-")}
    auths = {d["metadata"]["name"] for _, d in dm.k8s_kind("TriggerAuthentication")}
    for file_name, kind in (("prometheus.yaml", "prometheus"), ("postgresql.yaml", "postgresql")):
        objects = _scaled_objects(file_name)
        targets = {o["spec"]["scaleTargetRef"]["name"] for o in objects.values()}
        assert targets <= deployments and consumers <= targets, f"{file_name}: {targets}"
        for name, obj in objects.items():
            [trigger] = obj["spec"]["triggers"]
            assert trigger["type"] == kind
            meta = trigger["metadata"]
            if kind == "prometheus":
                assert meta["activationThreshold"] == "0" and float(meta["threshold"]) > 0
                workflows = _workflows_of_prometheus(meta["query"])
            else:
                assert meta["activationTargetQueryValue"] == "0" and float(meta["targetQueryValue"]) > 0
                assert trigger["authenticationRef"]["name"] in auths
                workflows = _workflows_of_sql(meta["query"])
            assert workflows <= registry_names, f"{file_name} {name}: {workflows - registry_names}"
            assert workflows == _served_workflows(obj["spec"]["scaleTargetRef"]["name"]), f"{file_name} {name}"
            if obj["spec"]["scaleTargetRef"]["name"] in consumers:
                assert obj["spec"]["minReplicaCount"] == 0, f"{name}: consumers scale from zero"


def test_fleet_runs_without_model_runtimes(tmp_path):
    """The API and consumer images hold no torch, no ONNX Runtime and no model_servers/: their
    code must not need them."""
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"torch", "onnxruntime", "numpy", "cv2", "diffusers", "transformers",
                                   "insightface", "piper", "PIL", "skimage", "onnx", "model_servers"}}:
            raise ImportError("blocked in the fleet image: " + name)
sys.meta_path.insert(0, Block())
from task_api.app import create_app
from task_api.settings import ApiSettings
create_app(ApiSettings(database_url="sqlite:///{tmp_path}/f.db", storage_url="file://{tmp_path}/s"))
from consumer.registry import load_processors
from consumer.settings import ConsumerSettings
import consumer.runner, consumer.__main__
processors = load_processors()
assert {{"echo", "tts", "image_gen", "face_swap"}} <= set(processors), processors
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=dm.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


class _Reply(BaseHTTPRequestHandler):
    replies: dict[str, tuple[int, bytes]] = {}

    def do_GET(self):  # noqa: N802
        status, body = self.replies[self.path]
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _healthcheck(port: int, *args: str) -> int:
    env = {"TASKFLEET_PORT": str(port), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, str(dm.DEPLOY / "healthcheck.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_script_fails_on_errors_and_unhealthy_model_servers():
    _Reply.replies = {
        "/loading": (200, json.dumps({"status": "loading"}).encode()),
        "/unhealthy": (200, json.dumps({"status": "unhealthy", "message": "models missing"}).encode()),
        "/down": (503, b'{"error": {"code": "database_unavailable"}}'),
        "/metrics": (200, b"# HELP x\nx 1\n"),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Reply)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert _healthcheck(port, "/loading") == 0
        assert _healthcheck(port, "/metrics") == 0
        assert _healthcheck(port, "/unhealthy") == 1
        assert _healthcheck(port, "/down") == 1
        assert _healthcheck(free_port(), "/loading") == 1
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ real Postgres

TOKENS = {"TASKFLEET_PRODUCER_TOKENS": "prod-token", "TASKFLEET_CONSUMER_TOKENS": "cons-token"}
INPUTS = {
    "echo": {"data": 1},
    "tts": {"text": "hello"},
    "image_gen": {"prompt": "a lighthouse"},
    "face_swap": {"source_url": "https://example.com/a.jpg", "target_url": "https://example.com/b.jpg"},
}


async def _query(url: str, sql: str):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.mark.postgres
def test_keda_triggers_count_the_same_outstanding_work_on_a_real_database(tmp_path):
    with postgres_database() as url, api_process(url, tmp_path, **TOKENS) as api:
        producer = httpx.Client(base_url=api.url, headers={"authorization": "Bearer prod-token"}, trust_env=False)
        consumer = httpx.Client(base_url=api.url, headers={"authorization": "Bearer cons-token"}, trust_env=False)
        created = {}
        for workflow, count in (("echo", 4), ("tts", 2), ("image_gen", 3), ("face_swap", 1)):
            for _ in range(count):
                reply = producer.post("/api/tasks", json={"workflow": workflow, "input": INPUTS[workflow]})
                assert reply.status_code == 201, reply.text
                created.setdefault(workflow, []).append(reply.json()["task_id"])
        # echo: 1 leased (PROCESSING), 1 cancelled, 2 PENDING; image_gen: 1 leased, 2 PENDING.
        for workflow in ("echo", "image_gen"):
            reply = consumer.get("/api/comm/task/fetch", params={"workflow": workflow, "consumer_id": "t", "wait_s": 0})
            assert reply.status_code == 200, reply.text
        pending_echo = [t for t in created["echo"] if producer.get(f"/api/tasks/{t}").json()["status"] == "PENDING"]
        assert producer.post(f"/api/tasks/{pending_echo[0]}/cancel").json()["status"] == "CANCELLED"
        outstanding = {"echo": 3, "tts": 2, "image_gen": 3, "face_swap": 1}
        pending_total = 2 + 2 + 2 + 1

        for name, obj in _scaled_objects("postgresql.yaml").items():
            query = obj["spec"]["triggers"][0]["metadata"]["query"]
            expected = sum(outstanding[w] for w in _workflows_of_sql(query))
            assert asyncio.run(_query(url, query)) == expected, f"postgresql.yaml {name}: {query}"

        text = httpx.get(api.url + "/metrics", trust_env=False).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        names = {s.name for s in samples}
        assert "taskfleet_queue_depth" in names
        assert next(s.value for s in samples if s.name == "taskfleet_queue_depth") == pending_total
        for name, obj in _scaled_objects("prometheus.yaml").items():
            query = obj["spec"]["triggers"][0]["metadata"]["query"]
            metric, matchers = _matchers(PROM_QUERY.match(query)[1])
            assert metric in names, f"prometheus.yaml {name}: /metrics has no {metric}"
            # One replica: max by (status) over replicas is that replica's value.
            value = sum(s.value for s in samples if s.name == metric and _matches(s.labels, matchers))
            expected = sum(outstanding[w] for w in _workflows_of_prometheus(query))
            assert value == expected, f"prometheus.yaml {name}: {query} -> {value}, want {expected}"

        assert _healthcheck(api.port, "/ready") == 0


# ------------------------------------------------------------------------- Pod Security, images


def _pod_specs() -> list[tuple[str, dict]]:
    """Every pod template deploy/k8s has: what `kubectl apply -k` renders, and the Job."""
    docs = dm.render_kustomization() + [d for p, d in dm.k8s_documents() if p.parent.name == "jobs"]
    return [(f"{d['kind']}/{d['metadata']['name']}", dm.pod_spec(d)) for d in docs if "template" in d.get("spec", {})]


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(spec: dict) -> list[str]:
    """What keeps a pod spec out of a namespace that enforces Pod Security "restricted"
    (kubernetes.io/docs/concepts/security/pod-security-standards), the baseline's rules included."""
    out = []
    pod = spec.get("securityContext", {})
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']}: {kinds - RESTRICTED_VOLUMES}")
    if pod.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in containers:
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
            out.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            out.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile {seccomp}")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            out.append(f"{where}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}: adds {capabilities['add']}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{where}: hostPort")
        if (sc.get("procMount") or "Default") != "Default":
            out.append(f"{where}: procMount")
    return out


def test_every_pod_template_is_checked():
    # api, three consumers, three model servers, the download Job
    assert len(_pod_specs()) == 8


def test_the_namespace_enforces_pod_security_restricted():
    [namespace] = [d for d in dm.render_kustomization() if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_restricted_check_refuses_what_the_profile_refuses():
    good = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "tmp", "emptyDir": {}}]}  # fmt: skip
    assert restricted_violations(good) == []
    assert restricted_violations({**good, "securityContext": {"runAsNonRoot": True}})  # no seccomp
    assert restricted_violations({**good, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]})
    assert restricted_violations({**good, "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False}}]})


@pytest.mark.parametrize("where", [where for where, _ in _pod_specs()])
def test_every_pod_is_admitted_under_pod_security_restricted(where):
    assert restricted_violations(dict(_pod_specs())[where]) == [], where


@pytest.mark.parametrize("where", [where for where, _ in _pod_specs()])
def test_root_filesystems_are_read_only_and_what_processes_write_is_a_volume(where):
    spec = dict(_pod_specs())[where]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        assert c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}"
        writable = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")
                    and ("emptyDir" in volumes[m["name"]] or "persistentVolumeClaim" in volumes[m["name"]])}  # fmt: skip
        # Python's tempfile, ffmpeg and the SDKs write to /tmp; the settings below name the rest.
        assert "/tmp" in writable, f"{where}/{c['name']}: no writable /tmp"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for name in ("TASKFLEET_WORK_DIR", "HF_HOME") + (("TASKFLEET_MODELS_DIR",) if where.startswith("Job/") else ()):
            path = env.get(name)
            if path:
                assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), f"{where}: {name}={path} is read-only"


def test_model_servers_are_ready_on_ready_and_alive_on_health():
    """Readiness answers 503 while a server cannot work (models missing, loading); liveness only
    asks whether the process answers, so missing models do not become a restart loop."""
    seen = 0
    for _, doc in dm.k8s_kind("Deployment"):
        container = dm.pod_spec(doc)["containers"][0]
        module = dm.python_module(container["command"])
        if module.startswith("model_servers.") or module == "task_api":
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready", doc["metadata"]["name"]
            assert container["livenessProbe"]["httpGet"]["path"] == "/health", doc["metadata"]["name"]
            seen += 1
    assert seen == 4


def pinned(image: str) -> bool:
    """A digest, or a tag that names one release: not `latest`, and a version tag down to its minor."""
    _, tag, digest = dm.split_image(image)
    if digest:
        return True
    if not tag or tag == "latest":
        return False
    return not tag[0].isdigit() or re.match(r"\d+\.\d+", tag) is not None


def test_pinned_means_one_release():
    assert pinned("postgres:16.10-bookworm") and pinned("minio/minio:RELEASE.2025-09-07T16-13-09Z")
    assert pinned("python:3.11.14-slim-bookworm") and pinned("registry.example.com:5000/taskfleet-api:0.1.0")
    assert pinned("postgres@sha256:" + "0" * 64)
    assert not pinned("minio/minio:latest") and not pinned("minio/minio") and not pinned("postgres:16-bookworm")
    assert not pinned("registry.example.com:5000/taskfleet-api")


def test_every_image_is_pinned():
    images = [(where, c["image"]) for where, spec in _pod_specs() for c in spec["containers"]]
    for file_name, services in dm.compose_services().items():
        images += [(f"{file_name} {name}", s["image"]) for name, s in services.items() if "image" in s]
    args = dm.dockerfile_args()
    stages = dm.dockerfile_stages()
    for word, rest in dm.dockerfile_instructions(dm.DOCKERFILE.read_text()):
        if word == "FROM":
            image = rest.split()[0]
            for name, default in args.items():
                image = image.replace(f"${{{name}}}", default)
            if image not in stages:
                images.append(("Dockerfile", image))
    assert len(images) >= 18
    unpinned = [f"{where}: {image}" for where, image in images if not pinned(image)]
    assert unpinned == []


# ------------------------------------------------------------------------------ lock files

REQUIREMENTS = dm.DEPLOY / "requirements"
LOCKS = ["face-swap-cpu.txt", "face-swap-cuda.txt", "fleet.txt", "flux.txt", "tts.txt"]
LOCK_ENV = {"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip


def lock_pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a lock file; fails on a line that is not a hashed ==-pin."""
    from packaging.utils import canonicalize_name

    pins = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert m, f"{path.name}: not a pinned, hashed requirement: {line[:120]}"
        pins[canonicalize_name(m[1])] = (m[3], re.findall(r"sha256:([0-9a-f]{64})", m[4]))
    return pins


def lock_script() -> dict[str, list[str]]:
    """deploy/requirements/lock.sh's compile lines: lock file -> the arguments it is made with."""
    out = {}
    for line in (REQUIREMENTS / "lock.sh").read_text().splitlines():
        m = re.match(r"\s*compile (\S+\.txt)(.*?)(?:\s+#.*)?$", line)
        if m:
            out[m[1]] = m[2].split()
    return out


def image_locks() -> dict[str, list[str]]:
    """Each final image -> the lock files its build stage may install (one per build argument value)."""
    stages = dm.dockerfile_stages()
    out = {}
    for name, stage in stages.items():
        if not stage.entrypoint:
            continue
        chain, venv_from = name, None
        while chain and venv_from is None:  # the stage (or an ancestor) that copies in /opt/venv
            copies = [r.split() for w, r in dm.stage_instructions(chain) if w == "COPY" and r.endswith(" /opt/venv /opt/venv")]
            venv_from = copies[0][0].removeprefix("--from=") if copies else None
            chain = stages[chain].parent
        assert venv_from, f"{name}: no /opt/venv copied in"
        build = dm.stage_instructions(venv_from)
        copies = {r.split()[-1]: r.split()[0] for w, r in build if w == "COPY" and r.startswith("deploy/requirements/")}
        runs = [r for w, r in build if w == "RUN"]
        installs = [r for r in runs if "pip install" in r]
        assert len(copies) == 1 and len(installs) == 2, f"{venv_from}: one lock file installed, then the project"
        [(target, source)] = copies.items()
        assert f"pip install --no-deps --require-hashes -r {target}" in installs[0], installs[0]
        assert installs[1].endswith("pip install --no-deps --no-build-isolation ."), installs[1]
        # A build argument in the path (face-swap's ACCELERATOR): every lock file it can name.
        pattern = re.sub(r"\$\{\w+\}", "*", source)
        names = [p.name for p in dm.ROOT.glob(pattern)]
        out[name] = names
    return out


def test_each_image_installs_its_python_packages_from_a_lock_file():
    locks = {image: sorted(names) for image, names in image_locks().items()}
    assert locks == {"api": ["fleet.txt"], "consumer": ["fleet.txt"], "face-swap": ["face-swap-cpu.txt", "face-swap-cuda.txt"],
                     "flux": ["flux.txt"], "tts": ["tts.txt"]}  # fmt: skip
    assert dm.dockerfile_stages()["face-swap-build"].args["ACCELERATOR"] == "cpu"
    # Every lock file is one lock.sh writes, and lock.sh writes no other.
    assert {n for names in locks.values() for n in names} == set(lock_script()) == {p.name for p in REQUIREMENTS.glob("*.txt")} == set(LOCKS)


def _requirements(extras: list[str], inputs: list[Path]) -> list:
    """What pyproject.toml asks for with these extras (self-references expanded), plus the .in files'."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((dm.ROOT / "pyproject.toml").read_text())["project"]
    wanted, todo, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            if req.name == project["name"]:
                todo += sorted(req.extras)
            else:
                wanted.append(req)
    for path in inputs:
        wanted += [Requirement(line) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [r for r in wanted if r.marker is None or r.marker.evaluate(LOCK_ENV)]


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_file_pins_everything_pyproject_asks_for(lock):
    """A dependency changed in pyproject.toml without running lock.sh fails here, not in a build."""
    from packaging.utils import canonicalize_name

    args = lock_script()[lock]
    extras = [args[i + 1] for i, a in enumerate(args) if a == "--extra"]
    inputs = [dm.ROOT / a for a in args if a.endswith(".in")] + [REQUIREMENTS / "build.in"]
    left_out = {canonicalize_name(args[i + 1]) for i, a in enumerate(args) if a == "--no-emit-package"}
    pins = lock_pins(REQUIREMENTS / lock)
    assert len(pins) >= 40 and "setuptools" in pins  # the project is built with the lock's setuptools
    assert not left_out & set(pins)
    for req in _requirements(extras, inputs):
        name = canonicalize_name(req.name)
        if name in left_out:
            continue
        assert name in pins, f"{lock}: {req} is not locked"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{lock}: {name}=={pins[name][0]} does not satisfy {req}"
    runtimes = {"torch", "onnxruntime", "onnxruntime-gpu", "diffusers", "insightface", "piper-tts"}
    if lock == "fleet.txt":
        assert not runtimes & set(pins), "the fleet image carries a model runtime"
    if lock == "face-swap-cuda.txt":
        assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins  # one `onnxruntime` module, the CUDA one
