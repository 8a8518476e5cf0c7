"""``python -m consumer`` / ``taskfleet consumer``: one asyncio process serving the configured workflows."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from taskfleet.logs import setup_logging
from consumer.settings import ConsumerSettings
from taskfleet.settings_check import exit_on_bad_settings, warn_unknown_names

try:
    # uvloop (with uvicorn[standard]) where the platform has it, as the API runs on: each task
    # costs the consumer a request or two, and asyncio's pure-Python loop and socket transports
    # were about a sixth of its CPU per task.
    from uvloop import new_event_loop
except ImportError:  # pragma: no cover -- Windows, PyPy
    new_event_loop = asyncio.new_event_loop

PROG = "taskfleet consumer"


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--api-url", help="task API base URL (TASKFLEET_API_URL)")
    p.add_argument("--workflows", help="comma-separated workflows to serve (TASKFLEET_WORKFLOWS); default: every installed one whose model servers are set")
    p.add_argument("--concurrency", type=int, help="tasks worked on at once (TASKFLEET_CONCURRENCY)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (TASKFLEET_METRICS_PORT)")
    p.add_argument("--metrics-host", help="address for the metrics endpoint (TASKFLEET_METRICS_HOST)")
    p.add_argument("--storage-url", help="TASKFLEET_STORAGE_URL")
    p.add_argument("--consumer-id", help="name shown in task history (TASKFLEET_CONSUMER_ID)")
    p.add_argument("--shutdown-grace-s", type=float, help="TASKFLEET_SHUTDOWN_GRACE_S")
    p.add_argument("--log-format", choices=["json", "text"], help="TASKFLEET_LOG_FORMAT")
    args = vars(p.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


async def serve(settings: ConsumerSettings) -> None:
    from consumer.runner import Consumer

    consumer = Consumer(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.request_stop)
    await consumer.run()


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    # Also around the run: a model-server or storage setting found wrong while starting, and a
    # token the API refuses, end the process the same way.
    with exit_on_bad_settings(PROG, flags=overrides):
        settings = ConsumerSettings(**overrides)
        setup_logging(settings.log_level, settings.log_format)
        warn_unknown_names("consumer")
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
