"""Consumer settings, read once from ``TASKFLEET_*`` env vars (CONTRACT §2) and passed in."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]

# Model-server kinds with a setting of their own; any other kind goes in TASKFLEET_MODEL_SERVER_URLS.
BUILTIN_KINDS = ("face_swap", "flux", "tts")


def url_setting(kind: str) -> str:
    """Where an operator sets the URLs of a model-server kind."""
    if kind in BUILTIN_KINDS:
        return f"TASKFLEET_{kind.upper()}_URLS"
    return f'TASKFLEET_MODEL_SERVER_URLS ({{"{kind}": [...]}})'


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ConsumerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKFLEET_", extra="ignore")

    api_url: str = "http://127.0.0.1:8000"
    consumer_token: str | None = None
    consumer_id: str | None = None
    workflows: CommaList = Field(default_factory=list)  # empty: every workflow that has a processor
    concurrency: int = Field(4, ge=1, le=1024)

    face_swap_urls: CommaList = Field(default_factory=list)
    flux_urls: CommaList = Field(default_factory=list)
    tts_urls: CommaList = Field(default_factory=list)
    # Further model-server kinds (from plugin workflows), as JSON: {"kind": ["http://...", ...]}.
    model_server_urls: dict[str, list[str]] = Field(default_factory=dict)
    model_timeout_s: float = 120.0
    # Per-workflow model-call timeouts, as JSON: {"face_swap": 900}.
    model_timeouts: dict[str, float] = Field(default_factory=dict)
    health_ttl_s: float = 2.0  # how long a /health answer is trusted
    breaker_failures: int = 3  # consecutive failures that open a server's circuit
    breaker_reset_s: float = 5.0  # open → half-open probe after this long (doubles while it keeps failing)
    outage_backoff_max_s: float = 30.0  # cap on the pause after releasing a task for an outage

    # ./var/storage, the API's default too, so one local stack shares it (the storage package
    # takes absolute file:// URLs only).
    storage_url: str = Field(default_factory=lambda: Path("var/storage").resolve().as_uri())
    public_url: str | None = None  # where the API serves local-storage files; default: api_url
    url_expiry_s: int = 3600
    max_input_mb: float = 2048
    url_allowlist: CommaList = Field(default_factory=list)
    work_dir: str = Field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "taskfleet"))

    api_connections: int = Field(8, ge=2)  # to the task API (one is held by the long poll)
    fetch_wait_s: float = 10.0  # long-poll length; also the longest a SIGTERM waits for an open fetch
    shutdown_grace_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics endpoint
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    _split_lists = field_validator(
        "workflows", "face_swap_urls", "flux_urls", "tts_urls", "url_allowlist", mode="before"
    )(_split)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError("should be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return value.upper()

    def server_urls(self) -> dict[str, list[str]]:
        """Model-server URLs by kind; the kind names match ``Workflow.model_server``."""
        urls = {kind: list(v) for kind, v in self.model_server_urls.items()}
        for kind, value in (("face_swap", self.face_swap_urls), ("flux", self.flux_urls), ("tts", self.tts_urls)):
            if value:
                urls[kind] = list(value)
        return urls

    def timeout_for(self, workflow: str) -> float:
        return self.model_timeouts.get(workflow, self.model_timeout_s)
