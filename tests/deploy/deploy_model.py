"""What deploy/ declares, read into plain records the deploy tests check against the code.

Every process that deploy/ starts, from the Dockerfile, compose files or Kubernetes manifests,
becomes a ``Container``: the ``python -m`` module it runs, the environment it gets (image ENV
under the container's own), the HTTP probes aimed at it and the ports it listens on.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILES = [DEPLOY / "compose.yaml", DEPLOY / "compose.gpu.yaml"]
K8S = DEPLOY / "k8s"

SECRET = object()  # an env value that comes from a Secret or a field reference


@dataclass
class Probe:
    path: str
    port: int | None  # None: the probe names a port the container does not declare


@dataclass
class Container:
    where: str
    module: str
    env: dict[str, Any] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    declared_ports: set[int] = field(default_factory=set)  # containerPort / EXPOSE


# ------------------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    name: str
    parent: str | None  # a stage of this file, or None for an outside image
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    healthcheck: list[str] | None = None
    user: str | None = None
    expose: set[int] = field(default_factory=set)
    args: dict[str, str] = field(default_factory=dict)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _env_pairs(rest: str) -> dict[str, str]:
    parts = shlex.split(rest)
    if len(parts) == 2 and "=" not in parts[0]:  # legacy `ENV NAME value`
        return {parts[0]: parts[1]}
    return dict(p.split("=", 1) for p in parts)


def dockerfile_stages(text: str | None = None) -> dict[str, Stage]:
    text = DOCKERFILE.read_text() if text is None else text
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for word, rest in dockerfile_instructions(text):
        if word == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert m, f"every FROM names its stage: FROM {rest}"
            image, name = m[1], m[2]
            parent = image if image in stages else None
            current = Stage(name=name, parent=parent)
            if parent:
                base = stages[parent]
                current.env = dict(base.env)
                current.entrypoint, current.healthcheck, current.user = base.entrypoint, base.healthcheck, base.user
                current.expose = set(base.expose)
            stages[name] = current
        elif current is None:
            continue
        elif word == "ENV":
            current.env.update(_env_pairs(rest))
        elif word == "ENTRYPOINT":
            current.entrypoint = json.loads(rest)
        elif word == "HEALTHCHECK":
            cmd = rest.split("CMD", 1)[1].strip() if "CMD" in rest else None
            current.healthcheck = json.loads(cmd) if cmd else None
        elif word == "USER":
            current.user = rest
        elif word == "EXPOSE":
            current.expose |= {int(p.split("/")[0]) for p in rest.split()}
        elif word == "ARG":
            name, _, default = rest.partition("=")
            current.args[name] = default
    return stages


def python_module(command: list[str] | None) -> str | None:
    """The X of ``python -m X ...``."""
    if command and len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        return command[2]
    return None


def healthcheck_probe(command: list[str], env: dict[str, Any]) -> Probe | None:
    """The probe a deploy/healthcheck.py command line makes (same defaults as the script)."""
    if not command or command[0] == "CMD":
        command = command[1:]
    if len(command) < 2 or not command[1].endswith("healthcheck.py"):
        return None
    args = command[2:]
    path = args[0] if args else "/health"
    variable = args[1] if len(args) > 1 else "TASKFLEET_PORT"
    value = env.get(variable)
    port = value if isinstance(value, str) and value else (args[2] if len(args) > 2 else "8000")
    return Probe(path, int(port))


def dockerfile_containers() -> list[Container]:
    out = []
    for stage in dockerfile_stages().values():
        module = python_module(stage.entrypoint)
        if module is None:
            continue
        c = Container(f"Dockerfile --target {stage.name}", module, dict(stage.env), declared_ports=set(stage.expose))
        if stage.healthcheck:
            probe = healthcheck_probe(stage.healthcheck, c.env)
            assert probe, f"{c.where}: HEALTHCHECK does not run deploy/healthcheck.py"
            c.probes.append(probe)
        out.append(c)
    return out


# ------------------------------------------------------------------------------ compose


def compose_services() -> dict[str, dict[str, dict]]:
    return {path.name: yaml.safe_load(path.read_text())["services"] for path in COMPOSE_FILES}


def _compose_env(service: dict) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (str(v) if v is not None else None) for k, v in env.items()}


def compose_containers() -> list[Container]:
    stages = dockerfile_stages()
    files = compose_services()
    base = files["compose.yaml"]
    out = []
    for file_name, services in files.items():
        for name, service in services.items():
            under = base.get(name, {}) if file_name != "compose.yaml" else {}
            target = (service.get("build") or {}).get("target") or (under.get("build") or {}).get("target")
            stage = stages.get(target) if target else None
            entrypoint = service.get("entrypoint") or under.get("entrypoint") or (stage.entrypoint if stage else None)
            module = python_module(entrypoint)
            if module is None:
                continue  # postgres, minio and the like
            env = dict(stage.env) if stage else {}
            env.update(_compose_env(base.get(name, {})))  # an override file adds to the base service
            env.update(_compose_env(service))
            c = Container(f"{file_name} service {name}", module, env)
            c.declared_ports = set(stage.expose) if stage else set()
            if file_name == "compose.yaml" and "healthcheck" in service:
                probe = healthcheck_probe(service["healthcheck"]["test"], env)
                assert probe, f"{c.where}: healthcheck does not run deploy/healthcheck.py"
                c.probes.append(probe)
            out.append(c)
    return out


def compose_duration_s(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", value):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


# ------------------------------------------------------------------------------ Kubernetes


def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # kustomize's own file, not a resource
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def k8s_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_documents() if d.get("kind") == kind]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def image_target(image: str) -> str | None:
    """deploy/k8s images are named taskfleet-<Dockerfile target> (kustomize rewrites the registry)."""
    m = re.match(r"(?:.*/)?taskfleet-([a-z-]+?)(?:-gpu)?(?::.*)?$", image)
    return m[1] if m else None


def k8s_containers() -> list[Container]:
    stages = dockerfile_stages()
    out = []
    for path, doc in k8s_documents():
        if doc.get("kind") not in ("Deployment", "Job"):
            continue
        for spec in pod_spec(doc)["containers"]:
            stage = stages.get(image_target(spec["image"]) or "")
            module = python_module(spec.get("command")) or python_module(stage.entrypoint if stage else None)
            assert module, f"{path.name} {doc['metadata']['name']}: cannot tell which process {spec['name']} runs"
            env = dict(stage.env) if stage else {}
            for item in spec.get("env", []):
                env[item["name"]] = item["value"] if "value" in item else SECRET
            named = {p.get("name"): p["containerPort"] for p in spec.get("ports", [])}
            c = Container(f"{path.relative_to(DEPLOY)} {doc['metadata']['name']}/{spec['name']}", module, env)
            c.declared_ports = set(named.values())
            for key in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = spec.get(key)
                if probe is None:
                    continue
                get = probe.get("httpGet")
                assert get, f"{c.where}: {key} is not an HTTP GET"
                port = get["port"]
                c.probes.append(Probe(get["path"], named.get(port) if isinstance(port, str) else int(port)))
            out.append(c)
    return out


def all_containers() -> list[Container]:
    return dockerfile_containers() + compose_containers() + k8s_containers()


def render_kustomization() -> list[dict]:
    """What ``kubectl apply -k deploy/k8s`` applies: the listed resources, in the kustomization's
    namespace, with its image names and tags (the two transformers deploy/k8s uses)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources", "images"}, (
        "deploy/k8s/kustomization.yaml uses a transformer this renderer does not apply"
    )
    images = {i["name"]: i for i in kustomization.get("images", [])}
    out = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc is None:
                continue
            if doc["kind"] != "Namespace" and "namespace" in kustomization:
                doc["metadata"]["namespace"] = kustomization["namespace"]
            if "template" in doc.get("spec", {}):
                spec = pod_spec(doc)
                for container in spec.get("containers", []) + spec.get("initContainers", []):
                    container["image"] = _retagged(container["image"], images)
            out.append(doc)
    return out


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; the tag is after the last path part's colon."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _retagged(image: str, images: dict[str, dict]) -> str:
    name, tag, digest = split_image(image)
    rule = images.get(name)
    if rule is None:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    return f"{name}:{tag}" if tag else name


def documented_secrets() -> dict[str, set[str]]:
    """The Secrets deploy/ tells operators to create (``kubectl create secret generic NAME
    --from-literal=KEY=...``), by name, with their keys."""
    found: dict[str, set[str]] = {}
    for path in (DEPLOY / "README.md", K8S / "keda" / "postgresql.yaml"):
        text = re.sub(r"\\\n[#\s]*", " ", path.read_text())  # join continued lines (and comment ones)
        value = r"""(?:"[^"]*"|'[^']*'|\S+)"""
        for m in re.finditer(rf"kubectl -n taskfleet create secret generic ([\w.-]+)((?:\s+--from-literal=[\w.-]+={value})+)", text):
            found.setdefault(m[1], set()).update(re.findall(r"--from-literal=([\w.-]+)=", m[2]))
    return found


def documented_literal(secret: str, key: str) -> str:
    """The example value deploy/README.md gives a Secret's key."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "README.md").read_text())
    m = re.search(rf"create secret generic {re.escape(secret)}\b[^\n]*?--from-literal={re.escape(key)}='?([^'\s]+)", text)
    assert m, f"deploy/README.md gives no value for {secret}/{key}"
    return m[1]


def dockerfile_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM lines may use)."""
    args = {}
    for word, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def stage_instructions(name: str) -> list[tuple[str, str]]:
    """The instructions of one Dockerfile stage (its FROM excluded)."""
    out, inside = [], False
    for word, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            inside = re.search(rf"\bAS\s+{re.escape(name)}$", rest, re.I) is not None
            continue
        if inside:
            out.append((word, rest))
    return out
