"""``python -m task_api`` — run the task API (same as ``taskfleet api``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from task_api.app import create_app
from task_api.settings import ApiSettings
from taskfleet.pipelines import PipelineLoadError

KEEP_ALIVE_S = 30


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taskfleet api", description="Run the task API")
    parser.add_argument("--host", default=None, help="bind address (TASKFLEET_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (TASKFLEET_PORT, default 8000)")
    parser.add_argument("--database-url", default=None, help="TASKFLEET_DATABASE_URL")
    parser.add_argument("--log-level", default=os.environ.get("TASKFLEET_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "database_url": args.database_url}.items() if v is not None}
    settings = ApiSettings(**overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        app = create_app(settings)
    except PipelineLoadError as exc:
        print(f"taskfleet api: pipeline {exc}", file=sys.stderr)
        sys.exit(2)
    # Idle connections stay open longer than the clients keep theirs (5 s), so a client never
    # sends a request on a connection the API is closing at that moment: a POST lost that way
    # could not be resent safely.
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


if __name__ == "__main__":
    main()
