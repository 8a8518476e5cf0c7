"""The task API's settings, read once from the environment (TASKFLEET_*) and passed in."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def split_csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKFLEET_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///./var/taskfleet.db"

    # Comma-separated token sets; none at all = open mode (loopback only).
    producer_tokens: str = ""
    consumer_tokens: str = ""
    admin_tokens: str = ""
    metrics_token: str = ""

    max_body_mb: float = 16
    max_input_mb: float = 2048  # cap on POST /api/files, like downloads

    lease_s: float = Field(60.0, gt=0)
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    max_wait_s: float = 60.0  # longest long-poll a fetch may ask for
    max_process_wait_s: float = 600.0
    reap_interval_s: float = 1.0
    retention_days: float = 30.0
    retention_interval_s: float = 3600.0

    webhook_secret: str = ""
    webhook_retry_delays: str = "5,15,45"
    webhook_timeout_s: float = 10.0
    url_allowlist: str = ""

    # Pipelines: operators' own definitions (every *.yaml there), and the most tasks one map
    # stage may fan out to.
    pipelines_dir: str = ""
    max_fanout: int = Field(1000, ge=0)

    storage_url: str = Field(default_factory=lambda: f"file://{Path('var/storage').resolve()}")
    # Base URL at which this API is reached, for links to locally stored files.
    public_url: str = ""

    @property
    def token_sets(self) -> dict[str, list[str]]:
        return {
            "producer": split_csv(self.producer_tokens),
            "consumer": split_csv(self.consumer_tokens),
            "admin": split_csv(self.admin_tokens),
        }

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def webhook_delays(self) -> list[float]:
        return [float(x) for x in split_csv(self.webhook_retry_delays)]
