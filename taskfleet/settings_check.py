"""The start-up checks every taskfleet process runs on its ``TASKFLEET_*`` environment.

A bad value ends the process with one line on stderr naming the variable, and exit code 2: an
operator reads it in ``kubectl logs`` without scrolling through a traceback. A ``TASKFLEET_*``
name that no taskfleet process reads is named in a warning, with the closest real name, because
a misspelt setting otherwise leaves its default in force without a word.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from taskfleet.errors import ConfigError

PREFIX = "TASKFLEET_"
EXIT_BAD_SETTINGS = 2  # argparse's code for a bad command line; a bad setting is the same mistake

log = logging.getLogger("taskfleet.settings")


@dataclass(frozen=True)
class ProcessKind:
    title: str
    settings: str = ""  # "module:Class", imported only when names are checked
    direct: tuple[str, ...] = ()  # names read straight from os.environ, not through a settings class


# Every process kind and what it reads. One environment is often shared by all of them (a compose
# file's .env, one ConfigMap), so a name is unknown only when no kind reads it.
KINDS: dict[str, ProcessKind] = {
    "api": ProcessKind("the task API", "task_api.settings:ApiSettings", ("TASKFLEET_LOG_LEVEL",)),
    "consumer": ProcessKind("the consumer", "consumer.settings:ConsumerSettings"),
    "face_swap": ProcessKind("the face-swap server", "model_servers.face_swap.settings:FaceSwapSettings"),
    "flux": ProcessKind("the Flux server", "model_servers.flux.settings:FluxSettings"),
    "tts": ProcessKind("the TTS server", "model_servers.tts.settings:TtsSettings"),
    "submit": ProcessKind(
        "the client commands (submit, tasks, consumers, stats)",
        direct=("TASKFLEET_API_URL", "TASKFLEET_TOKEN", "TASKFLEET_PRODUCER_TOKEN", "TASKFLEET_ADMIN_TOKEN"),
    ),
    "up": ProcessKind("taskfleet up", direct=("TASKFLEET_DATA_DIR", "TASKFLEET_PRODUCER_TOKEN")),
}


def settings_names(cls: type[BaseSettings]) -> set[str]:
    """The variables a settings class reads (pydantic-settings matches them case-insensitively)."""
    prefix = cls.model_config.get("env_prefix", "")
    return {(prefix + name).upper() for name in cls.model_fields}


def settings_class(kind: str) -> type[BaseSettings] | None:
    module, _, attr = KINDS[kind].settings.partition(":")
    return getattr(importlib.import_module(module), attr) if module else None


@functools.cache
def names_by_kind() -> dict[str, frozenset[str]]:
    names: dict[str, frozenset[str]] = {}
    for key, kind in KINDS.items():
        cls = settings_class(key)
        names[key] = frozenset(kind.direct) | (settings_names(cls) if cls else frozenset())
    return names


def unknown_name_warnings(kind: str, env: Mapping[str, str] | None = None) -> list[str]:
    """What is suspicious about the ``TASKFLEET_*`` names in ``env`` for a process of ``kind``."""
    env = os.environ if env is None else env
    by_kind = names_by_kind()
    own = by_kind[kind]
    known = frozenset().union(*by_kind.values())
    present = {name.upper() for name in env}
    found = []
    for name in sorted(n for n in env if n.upper().startswith(PREFIX)):
        upper = name.upper()
        if upper in own:
            continue
        if upper not in known:
            hint = _closest(upper, own) or _closest(upper, known)
            found.append(
                f"{name} is not a setting of any taskfleet process and is ignored"
                + (f"; did you mean {hint}?" if hint else "")
            )
            continue
        # Another kind's setting: expected in a shared environment, unless it is the singular or
        # plural of one of this process's own that is not set. TASKFLEET_PRODUCER_TOKEN (what
        # `taskfleet submit` sends) on the API, with no TASKFLEET_PRODUCER_TOKENS, leaves it open.
        twins = {upper + "S"} | ({upper[:-1]} if upper.endswith("S") else set())
        twin = next((t for t in sorted(twins & own) if t not in present), None)
        if twin:
            readers = ", ".join(KINDS[k].title for k, names in by_kind.items() if upper in names)
            found.append(f"{name} is not read by {KINDS[kind].title} (it is for {readers}); did you mean {twin}?")
    return found


def warn_unknown_names(kind: str, env: Mapping[str, str] | None = None) -> None:
    for message in unknown_name_warnings(kind, env):
        log.warning(message)


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    # Compared without the shared prefix, which would make every pair look alike.
    tails = {c[len(PREFIX):]: c for c in candidates if c.startswith(PREFIX)}
    match = difflib.get_close_matches(name[len(PREFIX):], tails, n=1, cutoff=0.75)
    return tails[match[0]] if match else None


@contextlib.contextmanager
def exit_on_bad_settings(prog: str, flags: Iterable[str] = ()) -> Iterator[None]:
    """Run a process's start-up inside: a bad setting ends it with one line on stderr, exit code 2.

    ``flags``: the settings fields given on the command line, named as ``--flag`` in the message.
    """
    try:
        yield
    except ValidationError as exc:
        if not _is_settings(exc.title):
            raise
        fail(prog, describe_validation_error(exc, set(flags)))
    except SettingsError as exc:  # a JSON-valued setting whose value is not JSON
        fail(prog, describe_settings_error(exc))
    except ConfigError as exc:
        fail(prog, exc.message)


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_SETTINGS)


def describe_validation_error(exc: ValidationError, flags: set[str] = frozenset()) -> str:
    # Values are left out: a database or storage URL may carry a password.
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        field = loc[0] if loc else ""
        where = f"--{field.replace('_', '-')}" if field in flags else PREFIX + field.upper()
        where += "".join(f"[{part}]" for part in loc[1:])
        ctx_error = err.get("ctx", {}).get("error")
        message = str(ctx_error) if err["type"] == "value_error" and ctx_error else err["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def describe_settings_error(exc: SettingsError) -> str:
    match = re.search(r'field "(\w+)"', str(exc))
    if not match:
        return str(exc)
    reason = f" ({exc.__cause__})" if exc.__cause__ else ""
    return f"{PREFIX}{match.group(1).upper()}: not valid JSON{reason}"


def _is_settings(title: str) -> bool:
    """Whether a ValidationError's model is a settings class (its title is the class name)."""
    pending = [BaseSettings]
    while pending:
        cls = pending.pop()
        if cls.__name__ == title:
            return True
        pending.extend(cls.__subclasses__())
    return False
