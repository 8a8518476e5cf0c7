"""The task API's settings, read once from the environment (TASKFLEET_*) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# The schemes task_api.db opens; checked here so a wrong one is a settings error at start.
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+asyncpg")


def split_csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


# A producer token may be named (``web:tok1``); a bare one belongs to the producer ``default``.
# Tasks an admin token (or the console) creates belong to ``admin``; in open mode to ``default``.
DEFAULT_PRODUCER = "default"
ADMIN_PRODUCER = "admin"


def named_tokens(value: str | None) -> list[tuple[str, str]]:
    """``web:tok1,tok2`` → [("web", "tok1"), ("default", "tok2")]: the name is what comes
    before the first colon, so a token itself may hold colons only when it is named."""
    pairs = []
    for entry in split_csv(value):
        name, colon, token = entry.partition(":")
        pairs.append((name.strip(), token.strip()) if colon else (DEFAULT_PRODUCER, entry))
    return pairs


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKFLEET_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///./var/taskfleet.db"
    # The one format of every taskfleet process's log lines (taskfleet/logs.py).
    log_format: Literal["json", "text"] = "json"

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
    # How often each replica re-reads the tasks its event streams watch, for other replicas'
    # changes that no NOTIFY announces (one statement per pass for all its streams).
    events_recheck_s: float = Field(1.0, gt=0)
    # Longest an event stream stays open before the API closes it (the client reconnects, as
    # EventSource does by itself); 0: until the task ends.
    events_max_s: float = Field(0.0, ge=0)
    # Consumers report themselves this often (the API tells them); one silent for the TTL drops
    # out of GET /api/consumers.
    consumer_report_s: float = Field(5.0, ge=1)
    consumer_ttl_s: float = Field(20.0, gt=0)
    # How long a task may stay PENDING before it ends FAILED `expired`, where its create gives
    # no expires_in_s; unset: as long as it takes.
    pending_ttl_s: Optional[float] = Field(None, gt=0, le=366 * 86400)
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

    @field_validator("pending_ttl_s", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # TASKFLEET_PENDING_TTL_S= (set, empty) reads as unset, as an unset variable does.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme, colon, _ = value.partition(":")
        if not colon or scheme not in DATABASE_SCHEMES:
            # Only the scheme is repeated: the rest of the URL may carry a password.
            what = f"scheme {scheme!r}" if colon else "a value that is not a URL"
            raise ValueError(f"unsupported database URL: {what} (use sqlite:///PATH or postgresql://…)")
        return value

    @property
    def token_sets(self) -> dict[str, list[str]]:
        return {
            "producer": [token for _, token in named_tokens(self.producer_tokens)],
            "consumer": split_csv(self.consumer_tokens),
            "admin": split_csv(self.admin_tokens),
        }

    @property
    def producer_names(self) -> dict[str, str]:
        """Each producer token's producer name."""
        return {token: name for name, token in named_tokens(self.producer_tokens)}

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def webhook_delays(self) -> list[float]:
        return [float(x) for x in split_csv(self.webhook_retry_delays)]
