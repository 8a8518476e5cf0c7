"""The ``taskfleet`` command line: one console script, a subcommand per process kind.

Each subcommand hands its remaining arguments to the ``main(argv)`` of the package that runs
it, so ``taskfleet api`` and ``python -m task_api`` are the same program.
"""

from __future__ import annotations

import argparse
import importlib
import sys

MODEL_SERVERS = ("face_swap", "flux", "tts")
CLIENT_COMMANDS = ("submit", "tasks", "consumers", "stats")


def _delegate(module: str, argv: list[str]) -> None:
    importlib.import_module(module).main(argv)


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
        choices=["api", "consumer", "model-server", "up", "submit", "tasks", "consumers", "stats", "models"],
        help="api: the task API · consumer: a consumer · model-server KIND: a model server · "
        "up: the whole local stack · submit: create a task · tasks list|get|cancel|retry|watch: "
        "inspect and act on tasks · consumers: the live consumers · stats: queues by workflow · "
        "models download NAME: fetch weights",
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
    elif command in CLIENT_COMMANDS:
        from taskfleet import commands

        commands.main(command, rest)
    elif command == "models":
        _models(rest)


if __name__ == "__main__":
    main()
