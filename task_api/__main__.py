"""``python -m task_api`` — run the task API (same as ``taskfleet api``)."""

from __future__ import annotations

import argparse
import asyncio
import os
from types import FrameType
from typing import Callable

import uvicorn
from uvicorn.config import LOG_LEVELS

from storage.errors import INVALID_CONFIG, StorageError
from task_api.app import create_app
from task_api.settings import ApiSettings
from taskfleet.errors import ConfigError
from taskfleet.logs import setup_logging
from taskfleet.pipelines import PipelineLoadError
from taskfleet.settings_check import exit_on_bad_settings, fail, warn_unknown_names

PROG = "taskfleet api"
KEEP_ALIVE_S = 30


class ApiServer(uvicorn.Server):
    """uvicorn's server, which also ends the open task event streams and parked long polls on
    SIGTERM / SIGINT: it waits for every open response before it stops, and a stream would
    otherwise never end, a parked fetch not before its wait_s."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: the loop may be asleep in select(), so wake it to run this.
        asyncio.get_running_loop().call_soon_threadsafe(self._on_exit)
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Run the task API")
    parser.add_argument("--host", default=None, help="bind address (TASKFLEET_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (TASKFLEET_PORT, default 8000)")
    parser.add_argument("--database-url", default=None, help="TASKFLEET_DATABASE_URL")
    parser.add_argument("--log-level", type=str.lower, choices=list(LOG_LEVELS), help="TASKFLEET_LOG_LEVEL (default info)")
    args = parser.parse_args(argv)
    log_level = args.log_level or os.environ.get("TASKFLEET_LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        fail(PROG, f"TASKFLEET_LOG_LEVEL: should be one of {', '.join(LOG_LEVELS)}")
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "database_url": args.database_url}.items() if v is not None}
    with exit_on_bad_settings(PROG, flags=overrides):
        settings = ApiSettings(**overrides)
        setup_logging(LOG_LEVELS[log_level], settings.log_format)
        warn_unknown_names("api")
        try:
            app = create_app(settings)
        except StorageError as exc:
            if exc.code != INVALID_CONFIG:
                raise
            raise ConfigError(f"TASKFLEET_STORAGE_URL: {exc.message}") from None
        except PipelineLoadError as exc:
            fail(PROG, f"pipeline {exc}")
    # Idle connections stay open longer than the clients keep theirs (5 s), so a client never
    # sends a request on a connection the API is closing at that moment: a POST lost that way
    # could not be resent safely.
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False, log_config=None,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    ApiServer(config, on_exit=app.state.services.queue.end_waits).run()


if __name__ == "__main__":
    main()
