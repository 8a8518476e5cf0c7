"""The ``taskfleet`` command line: one console script, a subcommand per process kind.

Each subcommand hands its remaining arguments to the ``main(argv)`` of the package that runs
it, so ``taskfleet api`` and ``python -m task_api`` are the same program.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys

MODEL_SERVERS = ("face_swap", "flux", "tts")


def _delegate(module: str, argv: list[str]) -> None:
    importlib.import_module(module).main(argv)


def _submit(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="taskfleet submit", description="Create a task (and wait for it)")
    parser.add_argument("workflow")
    parser.add_argument("--input", default="{}", help="JSON object, or @path to a JSON file")
    parser.add_argument("--priority", type=int, default=None)
    parser.add_argument("--wait", action="store_true", help="wait until the task finishes")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait")
    parser.add_argument("--api-url", default=os.environ.get("TASKFLEET_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("TASKFLEET_PRODUCER_TOKEN"))
    args = parser.parse_args(argv)
    raw = args.input
    if raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as fh:
            raw = fh.read()
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        parser.error(f"--input is not JSON: {exc}")

    from taskfleet.client import ProducerClient
    from taskfleet.errors import TaskfleetError
    from taskfleet.states import TaskStatus

    async def run() -> int:
        async with ProducerClient(args.api_url, args.token) as client:
            task = await client.submit(args.workflow, payload, priority=args.priority)
            if args.wait:
                task = await client.wait(task["task_id"], timeout=args.timeout)
            print(json.dumps(task, indent=2))
            return 0 if task["status"] in (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.COMPLETED) else 1

    try:
        sys.exit(asyncio.run(run()))
    except TaskfleetError as exc:
        print(json.dumps(exc.to_body(), indent=2), file=sys.stderr)
        sys.exit(2)


def _models(argv: list[str]) -> None:
    names = ("face_swap", "flux")
    if len(argv) < 2 or argv[0] != "download" or argv[1] not in names:
        print(f"usage: taskfleet models download {{{','.join(names)}}} [options]", file=sys.stderr)
        sys.exit(2)
    from taskfleet.settings_check import exit_on_bad_settings

    # The rest, --help included, belongs to that model server's download tool, which reads the
    # server's settings (where the models go).
    with exit_on_bad_settings(f"taskfleet models download {argv[1]}"):
        _delegate(f"model_servers.{argv[1]}.download", argv[2:])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="taskfleet",
        description="A pull-based task fleet in front of GPU model servers.",
        epilog="Run 'taskfleet COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "command",
        choices=["api", "consumer", "model-server", "up", "submit", "models"],
        help="api: the task API · consumer: a consumer · model-server KIND: a model server · "
        "up: the whole local stack · submit: create a task · models download NAME: fetch weights",
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in parser._actions[-1].choices:
        parser.error(f"unknown command {command!r}")
    if command == "api":
        _delegate("task_api.__main__", rest)
    elif command == "consumer":
        _delegate("consumer.__main__", rest)
    elif command == "model-server":
        if not rest or rest[0] not in MODEL_SERVERS:
            parser.error(f"model-server needs a kind: one of {', '.join(MODEL_SERVERS)}")
        _delegate(f"model_servers.{rest[0]}.__main__", rest[1:])
    elif command == "up":
        _delegate("taskfleet.stack", rest)
    elif command == "submit":
        _submit(rest)
    elif command == "models":
        _models(rest)


if __name__ == "__main__":
    main()
