"""The client subcommands of ``taskfleet``: ``submit``, ``tasks list|get|cancel|retry|watch``,
``consumers`` and ``stats``, each talking to a running task API.

Any failure (API down, bad URL, timeout, unknown task, unreadable file, a refusal with the API's
field-level details) ends the command with one or two lines on stderr and a non-zero exit, never a
traceback: these commands end up in scripts and CI logs, where a stack trace hides the one line
that matters. Exit codes: 0 done, 1 the task ended FAILED or CANCELLED, 2 the command failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import httpx

from taskfleet import errors
from taskfleet.states import TERMINAL, TaskStatus

EXIT_TASK_FAILED = 1
EXIT_ERROR = 2
DEFAULT_API_URL = "http://127.0.0.1:8000"
POLL_S = 0.5  # how often a watch polls an API that has no events stream


class CommandError(Exception):
    """A failure the user can act on; its message is printed as is."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (its default repeats the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def default_token() -> str | None:
    for name in ("TASKFLEET_TOKEN", "TASKFLEET_PRODUCER_TOKEN", "TASKFLEET_ADMIN_TOKEN"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def _api_url(value: str) -> str:
    url = httpx.URL(value) if "://" in value else None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value


def _positive(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _non_negative(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return seconds


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url", type=_api_url, default=os.environ.get("TASKFLEET_API_URL", DEFAULT_API_URL),
        help=f"the task API (default: TASKFLEET_API_URL, else {DEFAULT_API_URL})",
    )
    parser.add_argument(
        "--token", default=default_token(),
        help="bearer token (default: TASKFLEET_TOKEN, else TASKFLEET_PRODUCER_TOKEN, else TASKFLEET_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--request-timeout", type=_positive, default=30.0, metavar="SECONDS",
        help="give up on one API request after this long (default 30)",
    )
    parser.add_argument(
        "--retry-for", type=_non_negative, default=5.0, metavar="SECONDS",
        help="keep trying an API that cannot be reached or answers 503 (a restart) for this long (default 5; 0: once)",
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def submit_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="taskfleet submit", description="Create a task, and with --wait follow it to the end.")
    parser.add_argument("workflow", help="the workflow to run (echo, face_swap, image_gen, tts, a pipeline)")
    parser.add_argument("--input", default="{}", help="the task's input: a JSON object, or @path to a JSON file")
    parser.add_argument("--priority", type=int, default=None, help="larger runs first (default 0)")
    parser.add_argument("--wait", action="store_true", help="show its progress and wait until the task finishes")
    parser.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS", help="with --wait: give up after this long")
    _client_options(parser)
    return parser


def tasks_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="taskfleet tasks", description="List, inspect, cancel, retry and watch tasks.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do (ACTION --help for its options)")
    listing = actions.add_parser("list", help="tasks, newest first, a page at a time", description="Tasks, newest first, a page at a time.")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus], help="only tasks in this state")
    listing.add_argument("--workflow", help="only tasks of this workflow")
    listing.add_argument("--limit", type=int, default=20, help="tasks per page (1-500, default 20)")
    listing.add_argument("--cursor", help="the page after this cursor (printed under the previous page)")
    _json_option(listing)
    _client_options(listing)
    for name, text in (
        ("get", "a task as JSON, with its attempt history"),
        ("cancel", "cancel a task (PENDING at once; PROCESSING at its next heartbeat)"),
        ("retry", "put a FAILED or CANCELLED task back to PENDING"),
    ):
        sub = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("task_id", help="the task's id (tsk_...)")
        _client_options(sub)
    watch = actions.add_parser(
        "watch", help="a live progress bar until the task finishes",
        description="A live progress bar until the task finishes; exits 1 if it ends FAILED or CANCELLED.",
    )
    watch.add_argument("task_id", help="the task's id (tsk_...)")
    watch.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS", help="give up after this long")
    watch.add_argument("--json", action="store_true", help="print the finished task's JSON on stdout")
    _client_options(watch)
    return parser


def consumers_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="taskfleet consumers", description="The live consumers and their model servers (admin token)."
    )
    _json_option(parser)
    _client_options(parser)
    return parser


def stats_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="taskfleet stats", description="Per workflow: queue, throughput, wait and run times (admin token)."
    )
    _json_option(parser)
    _client_options(parser)
    return parser


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "submit": submit_parser, "tasks": tasks_parser, "consumers": consumers_parser, "stats": stats_parser,
}


def main(command: str, argv: list[str]) -> NoReturn:
    args = PARSERS[command]().parse_args(argv)
    prog = f"taskfleet {command}" + (f" {args.action}" if command == "tasks" else "")
    handler = {"submit": _submit, "tasks": _tasks, "consumers": _consumers, "stats": _stats}[command]
    sys.exit(_run(prog, args, lambda: handler(args)))


def _run(prog: str, args: argparse.Namespace, work: Callable[[], Awaitable[int]]) -> int:
    try:
        return asyncio.run(work())
    except KeyboardInterrupt:
        return 130
    except errors.TaskfleetError as exc:
        lines = [f"{exc.code}: {exc.message}"]
        if exc.details:
            lines.append(_describe_details(exc.details))
        return _fail(prog, *lines)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        return _fail(prog, f"cannot reach the task API at {args.api_url} ({reason})")
    except httpx.TimeoutException:
        return _fail(prog, f"the task API at {args.api_url} did not answer within {args.request_timeout:g}s")
    except httpx.HTTPError as exc:
        return _fail(prog, f"talking to the task API at {args.api_url} failed: {type(exc).__name__}: {exc}"[:300])
    except CommandError as exc:
        return _fail(prog, str(exc))


def _fail(prog: str, *lines: str) -> int:
    print(f"{prog}: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)
    return EXIT_ERROR


def _describe_details(details: Any) -> str:
    """A 422's pydantic errors as ``field: message; ...`` (one line, whatever their number)."""
    if isinstance(details, list) and all(isinstance(d, dict) and "msg" in d for d in details):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ())) or '(body)'}: {d['msg']}" for d in details)
    return json.dumps(details)[:500]


def _client(args: argparse.Namespace):
    from taskfleet.client import AdminClient

    # A person is waiting: a few seconds carry a command through an API restart, then the
    # failure is theirs to see (a program's client keeps trying for 30 s).
    return AdminClient(args.api_url, args.token, timeout=args.request_timeout, resend_for_s=args.retry_for, connect_retries=2)


def _read_input(raw: str) -> Any:
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as fh:
                raw = fh.read()
        except OSError as exc:
            raise CommandError(f"--input: cannot read {raw[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--input is not JSON: {exc}") from None


async def _submit(args: argparse.Namespace) -> int:
    payload = _read_input(args.input)
    async with _client(args) as client:
        task = await client.submit(args.workflow, payload, priority=args.priority)
        if args.wait:
            await follow(client, task["task_id"], args.timeout)
            task = await client.get(task["task_id"])
        print(json.dumps(task, indent=2))
    return _task_exit("taskfleet submit", task)


def _task_exit(prog: str, task: dict[str, Any]) -> int:
    if task["status"] in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        error = task.get("error") or {}
        detail = f": {error.get('code')}: {error.get('message')}" if error else ""
        print(f"{prog}: task {task['task_id']} ended {task['status']}{detail}", file=sys.stderr)
        return EXIT_TASK_FAILED
    return 0


async def _tasks(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.action == "list":
            if not 1 <= args.limit <= 500:
                raise CommandError("--limit: must be from 1 to 500")
            page = await client.list(status=args.status, workflow=args.workflow, limit=args.limit, cursor=args.cursor)
            if args.json:
                print(json.dumps(page, indent=2))
            else:
                _print_tasks(page)
            return 0
        if args.action == "watch":
            task = await follow(client, args.task_id, args.timeout)
            if args.json:
                print(json.dumps(task, indent=2))
            return _task_exit("taskfleet tasks watch", task)
        call = {"get": client.get, "cancel": client.cancel, "retry": client.retry}[args.action]
        print(json.dumps(await call(args.task_id), indent=2))
        return 0


async def _consumers(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        consumers = await client.consumers()
    if args.json:
        print(json.dumps(consumers, indent=2))
    else:
        _print_consumers(consumers)
    return 0


async def _stats(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        stats = await client.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        _print_stats(stats)
    return 0


async def task_updates(client: Any, task_id: str) -> AsyncIterator[dict[str, Any]]:
    """The task as it changes, until it is terminal: from its events stream, or by polling an API
    that has none (its 404 is then told apart from an unknown task's by a plain GET)."""
    try:
        async for task in client.events(task_id):
            yield task
            if task["status"] in TERMINAL:
                return
    except errors.NotFound:
        await client.get(task_id)
    # The stream is missing or ended early (an API restart): polling still gets to the end.
    previous = None
    while True:
        task = await client.get(task_id)
        if task != previous:
            yield task
            previous = task
        if task["status"] in TERMINAL:
            return
        await asyncio.sleep(POLL_S)


async def follow(client: Any, task_id: str, timeout: float | None) -> dict[str, Any]:
    """Show a live progress bar (on stderr) until the task is terminal; returns its last state."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    task: dict[str, Any] = {}
    columns = (
        TextColumn("{task.fields[task_id]}"), TextColumn("{task.fields[status]:<10}"), BarColumn(),
        TaskProgressColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
    )
    bar = Progress(*columns, console=Console(stderr=True))
    row = bar.add_task("", total=100, task_id=task_id, status="")
    try:
        async with asyncio.timeout(timeout):
            async for task in task_updates(client, task_id):
                # Shown from the first answer on: a command that fails before it prints no empty bar.
                bar.start()
                progress = task.get("progress") or {}
                percent = 100 if task["status"] == TaskStatus.COMPLETED else progress.get("percent") or 0
                bar.update(row, completed=percent, status=task["status"], description=progress.get("message") or "")
    except TimeoutError:
        status = task.get("status", "unknown")
        raise CommandError(f"task {task_id} still {status} after {timeout:g}s") from None
    finally:
        bar.stop()
    return task


def _table(title: str, columns: list[str]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, no_wrap=name in ("task", "consumer", "workflow"))
    return table


def _print(table: Any) -> None:
    from rich.console import Console

    Console().print(table)


def _when(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


def _print_tasks(page: dict[str, Any]) -> None:
    table = _table("tasks", ["task", "workflow", "status", "progress", "attempts", "created", "updated"])
    for t in page["items"]:
        progress = t.get("progress") or {}
        table.add_row(
            t["task_id"], t["workflow"], t["status"], f"{progress.get('percent') or 0:g}%",
            f"{t['attempts']}/{t['max_attempts']}", _when(t["created_at"]), _when(t["updated_at"]),
        )
    _print(table)
    if page.get("next_cursor"):
        print(f"next page: --cursor {page['next_cursor']}")


def _ago(seconds: Any) -> str:
    return "" if seconds is None else f"{float(seconds):.1f}s"


def _print_consumers(consumers: list[dict[str, Any]]) -> None:
    table = _table("consumers", ["consumer", "host", "workflows", "in flight", "last seen", "model servers"])
    for c in consumers:
        servers = ", ".join(
            f"{s.get('workflow', '?')} {s.get('url', '?')} {s.get('status', '?')} {s.get('in_flight', 0)}/{s.get('capacity', '?')}"
            for s in c.get("model_servers") or ()
        )
        table.add_row(
            c["consumer_id"], c.get("host", ""), ",".join(c.get("workflows") or ()) or "any",
            f"{c.get('in_flight', 0)}/{c.get('concurrency', '?')}", _when(c.get("last_seen")), servers,
        )
    _print(table)


STAT_COLUMNS = (
    ("pending", "pending"), ("processing", "processing"),
    ("completed_5m", "done 5m"), ("completed_1h", "done 1h"), ("failed_5m", "failed 5m"), ("failed_1h", "failed 1h"),
    ("wait_s.p50", "wait p50"), ("wait_s.p95", "wait p95"), ("run_s.p50", "run p50"), ("run_s.p95", "run p95"),
    ("oldest_pending_age_s", "oldest pending"),
)


def _stat(row: dict[str, Any], key: str) -> Any:
    # "wait_s.p50": the percentiles come nested under their measure in /api/stats.
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _print_stats(stats: dict[str, Any]) -> None:
    table = _table("stats", ["workflow", *(label for _, label in STAT_COLUMNS)])
    for row in stats["workflows"]:
        cells = []
        for key, _ in STAT_COLUMNS:
            value = _stat(row, key)
            cells.append(_ago(value) if key.split(".")[0].endswith("_s") else str(value if value is not None else ""))
        table.add_row(row["workflow"], *cells)
    _print(table)
