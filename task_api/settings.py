"""The task API's settings, read once from the environment (TASKFLEET_*) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationInfo, field_validator
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


def known_producers(producer_tokens: str) -> set[str]:
    """The producer names tasks can carry: every token's, ``admin``, and ``default`` where a
    bare token (or open mode, no producer token at all) makes tasks of it."""
    names = {name for name, _ in named_tokens(producer_tokens)} | {ADMIN_PRODUCER}
    if not names - {ADMIN_PRODUCER}:
        names.add(DEFAULT_PRODUCER)
    return names


def per_producer(value: str, known: set[str], kind: Literal["weight", "rate", "count"]) -> dict[str, float]:
    """``web:3,batch:1`` → {"web": 3.0, "batch": 1.0}, every name a known producer and every
    value a positive number (a count: a whole number ≥ 0). ValueError says what is wrong."""
    found: dict[str, float] = {}
    for entry in split_csv(value):
        name, colon, text = entry.partition(":")
        name, text = name.strip(), text.strip()
        if not colon or not name:
            raise ValueError(f"{entry!r} is not name:number")
        if name not in known:
            raise ValueError(f"unknown producer {name!r} (producers: {', '.join(sorted(known))})")
        try:
            number = float(text) if kind != "count" else int(text)
        except ValueError:
            what = "a whole number" if kind == "count" else "a number"
            raise ValueError(f"{name}: {text!r} is not {what}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{name}: {text!r} is not a finite number")
        if number < 0 or (number == 0 and kind != "count"):
            raise ValueError(f"{name}: {text} must be {'at least 0' if kind == 'count' else 'more than 0'}")
        if name in found:
            raise ValueError(f"producer {name!r} is named twice")
        found[name] = float(number)
    return found


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
    # Per producer (CONTRACT §9), each ``name:value,…`` over the names of producer_tokens:
    # fair-share weight within a priority (default 1), creates per second (default unlimited)
    # and most tasks PENDING at once (default unlimited).
    producer_weights: str = ""
    producer_rate: str = ""
    producer_max_pending: str = ""

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

    @field_validator("producer_weights", "producer_rate", "producer_max_pending")
    @classmethod
    def _per_producer(cls, value: str, info: ValidationInfo) -> str:
        kind = {"producer_weights": "weight", "producer_rate": "rate", "producer_max_pending": "count"}[info.field_name]
        per_producer(value, known_producers(info.data.get("producer_tokens", "")), kind)  # type: ignore[arg-type]
        return value

    @property
    def weights(self) -> dict[str, float]:
        return per_producer(self.producer_weights, known_producers(self.producer_tokens), "weight")

    @property
    def rates(self) -> dict[str, float]:
        return per_producer(self.producer_rate, known_producers(self.producer_tokens), "rate")

    @property
    def max_pending(self) -> dict[str, int]:
        counts = per_producer(self.producer_max_pending, known_producers(self.producer_tokens), "count")
        return {name: int(n) for name, n in counts.items()}

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
