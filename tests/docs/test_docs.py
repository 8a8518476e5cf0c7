"""docs/ kept true to the code: every settings field with its default in docs/settings.md, every
route and error code of the task API in docs/api.md, and no document pointing outside the
repository (a clone has nothing beside it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from pydantic_settings import BaseSettings

from consumer.settings import ConsumerSettings
from model_servers.base import ModelServerSettings
from model_servers.face_swap.settings import FaceSwapSettings
from model_servers.flux.settings import FluxSettings
from model_servers.tts.settings import TtsSettings
from task_api.settings import ApiSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PROCESS_SETTINGS = [ApiSettings, ConsumerSettings, FaceSwapSettings, FluxSettings, TtsSettings]
ROW = re.compile(r"^\| `(TASKFLEET_[A-Z0-9_]+)` \| ([^|]*) \|", re.M)


def settings_sections() -> dict[str, dict[str, str]]:
    """docs/settings.md's tables by the settings class each section names: env name -> default cell."""
    sections = {}
    for chunk in (DOCS / "settings.md").read_text().split("\n## ")[1:]:
        named = re.search(r"`(\w+Settings)`", chunk)
        if named:
            sections[named[1]] = {name: cell.strip() for name, cell in ROW.findall(chunk)}
    return sections


def rendered(default: object) -> str:
    """A default as the page writes it."""
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


@pytest.mark.parametrize("cls", PROCESS_SETTINGS, ids=lambda c: c.__name__)
def test_settings_page_lists_every_field_with_its_default(cls: type[BaseSettings]):
    sections = settings_sections()
    assert cls.__name__ in sections, f"docs/settings.md has no section naming {cls.__name__}"
    rows = dict(sections[cls.__name__])
    if issubclass(cls, ModelServerSettings):
        shared = sections[ModelServerSettings.__name__]
        assert not set(shared) & set(rows), "a field is in both the shared and the server's own table"
        rows |= shared
    prefix = cls.model_config["env_prefix"]
    fields = {prefix + name.upper(): field for name, field in cls.model_fields.items()}
    assert sorted(set(fields) - set(rows)) == [], f"{cls.__name__} fields missing from docs/settings.md"
    assert sorted(set(rows) - set(fields)) == [], f"docs/settings.md rows that {cls.__name__} does not read"
    for env, field in fields.items():
        if field.default_factory is None:
            assert rows[env].replace("`", "") == rendered(field.default), f"{env}: the page says {rows[env]}"


def test_settings_page_lists_the_names_the_command_line_reads():
    """Names read straight from the environment, outside the settings classes, by the kind of
    process that reads them (the start-up check's own list)."""
    from taskfleet.settings_check import KINDS

    section = (DOCS / "settings.md").read_text().split("\n## Command line", 1)[1]
    rows = {line for line in section.splitlines() if line.startswith("| `TASKFLEET_")}
    direct = [(name, kind) for kind, spec in KINDS.items() for name in spec.direct]
    assert direct
    for name, kind in direct:
        command = "taskfleet api" if kind == "api" else f"taskfleet {kind}"
        assert any(f"`{name}`" in row and f"`{command}`" in row for row in rows), f"{name} ({command})"


def api_routes() -> list[tuple[str, str]]:
    from task_api.app import create_app

    app = create_app(ApiSettings(database_url="sqlite:///:memory:", storage_url=f"file://{ROOT}/var/docs-test"))
    return sorted((method, route.path_format) for route in app.routes if isinstance(route, APIRoute)
                  for method in route.methods)  # fmt: skip


def test_api_page_describes_every_route():
    text = (DOCS / "api.md").read_text()
    routes = api_routes()
    assert len(routes) >= 19
    missing = [f"{method} {path}" for method, path in routes if f"`{method} {path}`" not in text]
    assert missing == [], f"routes missing from docs/api.md: {missing}"
    documented = set(re.findall(r"^### `(GET|POST|PUT|PATCH|DELETE) (/[^`]*)`", text, re.M))
    assert documented - set(routes) <= {("GET", "/openapi.json")}, "docs/api.md describes routes the API does not serve"


# Where the API's answers get their codes: the error classes, the codes raised by name, the
# HTTP statuses' own codes, and the codes the queue writes into a task's error.
CODE_SOURCES = ["taskfleet/errors.py", "taskfleet/urlguard.py", "taskfleet/workflows/__init__.py", "task_api/**/*.py"]
CODE = re.compile(
    r"""\bcode(?:, status)?(?:, retryable)?\s*=\s*"([a-z0-9_]+)"|"code": "([a-z0-9_]+)"|\b\d{3}: "([a-z_]+)","""
)


def test_api_page_lists_every_error_code_the_api_gives():
    codes = set()
    for pattern in CODE_SOURCES:
        for path in ROOT.glob(pattern):
            codes |= {next(g for g in m.groups() if g) for m in CODE.finditer(path.read_text())}
    assert len(codes) >= 30, codes
    text = (DOCS / "api.md").read_text()
    assert sorted(c for c in codes if f"`{c}`" not in text) == []


def project_text_files() -> list[Path]:
    skip = {"var", "models", "__pycache__", "node_modules"}
    out = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in skip for p in parts[:-1]) or not path.is_file():
            continue
        if (
            path.suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".sh", ".in", ".cfg", ""}
            or path.name == "Dockerfile"
        ):
            out.append(path)
    return out


def test_nothing_points_outside_the_repository():
    # Spelled in two parts so that this file does not find itself.
    needles = ["../" + "shared", "/work/" + "shared"]
    files = project_text_files()
    assert len(files) > 100
    found = [f"{p.relative_to(ROOT)}: {n}" for p in files for n in needles if n in p.read_text(errors="replace")]
    assert found == []


@pytest.mark.parametrize("page", ["README.md", "docs/api.md", "docs/settings.md", "deploy/README.md",
                                  "model_servers/tts/README.md"])  # fmt: skip
def test_relative_links_of_the_pages_resolve(page):
    path = ROOT / page
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    broken = [link for link in links if "://" not in link and not (path.parent / link).exists()]
    assert broken == []
