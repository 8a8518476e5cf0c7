"""Settings at start, for every process kind through its real entry point: a bad value is one line
naming the variable and exit code 2; a TASKFLEET_* name no process reads is named in a warning."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, free_port, wait_http
from taskfleet.settings_check import KINDS, names_by_kind, unknown_name_warnings

MYSQL_URL = "mysql://app:hunter2@db.internal/tasks"


def clean_env(**env: str) -> dict[str, str]:
    """The test runner's environment without its TASKFLEET_* names, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("TASKFLEET_")}
    return {**base, "PYTHONUNBUFFERED": "1", **env}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=120,
    )


BAD_VALUES = [
    (["-m", "task_api"], "TASKFLEET_LEASE_S", "abc"),
    (["-m", "task_api"], "TASKFLEET_PENDING_TTL_S", "soon"),
    (["-m", "task_api"], "TASKFLEET_PENDING_TTL_S", "-5"),
    (["-m", "task_api"], "TASKFLEET_DATABASE_URL", MYSQL_URL),
    (["-m", "consumer"], "TASKFLEET_CONCURRENCY", "many"),
    (["-m", "consumer"], "TASKFLEET_MODEL_TIMEOUTS", "{face_swap: 900"),
    (["-m", "model_servers.face_swap"], "TASKFLEET_GPU_SLOTS", "many"),
    (["-m", "model_servers.flux"], "TASKFLEET_GPU_SLOTS", "many"),
    (["-m", "model_servers.tts"], "TASKFLEET_GPU_SLOTS", "many"),
    (["-m", "taskfleet", "api"], "TASKFLEET_DATABASE_URL", MYSQL_URL),
    (["-m", "taskfleet", "consumer"], "TASKFLEET_LOG_LEVEL", "loud"),
    (["-m", "taskfleet", "model-server", "face_swap"], "TASKFLEET_FACE_SWAP_ENGINE", "magic"),
    (["-m", "taskfleet", "models", "download", "face_swap"], "TASKFLEET_GPU_SLOTS", "many"),
    (["-m", "taskfleet", "models", "download", "flux"], "TASKFLEET_FLUX_MAX_BATCH", "0"),
]


@pytest.mark.parametrize(("args", "name", "value"), BAD_VALUES, ids=lambda p: " ".join(p) if isinstance(p, list) else None)
def test_a_bad_value_is_one_line_naming_the_variable_and_exit_code_2(args, name, value):
    result = run(args, {name: value})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskfleet ") and f"error: {name}:" in lines[0]
    assert "hunter2" not in result.stderr  # a URL's password stays out of logs


PRODUCER_SETTINGS = [
    ("TASKFLEET_PRODUCER_WEIGHTS", "mobile:2", "unknown producer 'mobile'"),
    ("TASKFLEET_PRODUCER_WEIGHTS", "web:0", "must be more than 0"),
    ("TASKFLEET_PRODUCER_WEIGHTS", "web:-1", "must be more than 0"),
    ("TASKFLEET_PRODUCER_RATE", "web:fast", "is not a number"),
    ("TASKFLEET_PRODUCER_RATE", "nobody:5", "unknown producer 'nobody'"),
    ("TASKFLEET_PRODUCER_MAX_PENDING", "batch:1.5", "is not a whole number"),
    ("TASKFLEET_PRODUCER_MAX_PENDING", "web", "is not name:number"),
]


@pytest.mark.parametrize(("name", "value", "says"), PRODUCER_SETTINGS)
def test_a_bad_producer_setting_stops_the_api_with_one_line_naming_it(name, value, says, tmp_path):
    env = {"TASKFLEET_PRODUCER_TOKENS": "web:t1,batch:t2", "TASKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}",
           name: value}  # fmt: skip
    result = run(["-m", "task_api"], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"error: {name}:" in lines[0] and says in lines[0], result.stderr
    assert "t1" not in lines[0].replace(name, "")  # no token in the message


def test_taskfleet_up_checks_every_process_before_starting_any(tmp_path):
    result = run(["-m", "taskfleet", "up", "--data-dir", str(tmp_path)], {"TASKFLEET_LEASE_S": "abc"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "taskfleet up: error: TASKFLEET_LEASE_S: Input should be a valid number, unable to parse string as a number"
    )
    assert "starting" not in result.stdout


def test_a_bad_flag_is_named_as_the_flag():
    result = run(["-m", "consumer", "--concurrency", "0"], {})
    assert result.returncode == 2
    assert result.stderr.strip() == "taskfleet consumer: error: --concurrency: Input should be greater than or equal to 1"


def start_and_read_output(args: list[str], env: dict[str, str], health_url: str, log: Path) -> str:
    """Run a server until it answers ``health_url``, stop it, and return what it wrote."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=clean_env(**env), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(health_url, 120, process)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    return log.read_text()


# Per process kind: a misspelt name with the real one it should suggest, and names other kinds
# read, which a shared environment holds and which must not be warned about.
KIND_CASES = {
    "api": ("TASKFLEET_LEASE", "TASKFLEET_LEASE_S", ["TASKFLEET_FACE_SWAP_URLS", "TASKFLEET_GPU_SLOTS"]),
    "consumer": ("TASKFLEET_CONCURENCY", "TASKFLEET_CONCURRENCY", ["TASKFLEET_LEASE_S", "TASKFLEET_GPU_SLOTS"]),
    "face_swap": ("TASKFLEET_GPU_SLOT", "TASKFLEET_GPU_SLOTS", ["TASKFLEET_LEASE_S", "TASKFLEET_WORKFLOWS"]),
    "flux": ("TASKFLEET_GPU_SLOT", "TASKFLEET_GPU_SLOTS", ["TASKFLEET_LEASE_S", "TASKFLEET_WORKFLOWS"]),
    "tts": ("TASKFLEET_GPU_SLOT", "TASKFLEET_GPU_SLOTS", ["TASKFLEET_LEASE_S", "TASKFLEET_WORKFLOWS"]),
}


@pytest.mark.parametrize("kind", list(KIND_CASES))
def test_an_unknown_name_is_warned_about_at_start_and_other_kinds_names_are_not(kind, tmp_path):
    typo, real, shared = KIND_CASES[kind]
    port = free_port()
    env = {typo: "2", **{name: "1" for name in shared}, "TASKFLEET_STORAGE_URL": (tmp_path / "storage").as_uri()}
    if kind == "api":
        env["TASKFLEET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'tasks.db'}"
        args, health = ["-m", "task_api", "--port", str(port)], f"http://127.0.0.1:{port}/ready"
    elif kind == "consumer":
        # No API answers there: the consumer keeps trying, its metrics port is up all the same.
        env.update(TASKFLEET_API_URL=f"http://127.0.0.1:{free_port()}", TASKFLEET_METRICS_PORT=str(port),
                   TASKFLEET_WORK_DIR=str(tmp_path / "work"), TASKFLEET_LOG_FORMAT="text")
        args, health = ["-m", "consumer"], f"http://127.0.0.1:{port}/metrics"
    else:
        env["TASKFLEET_MODELS_DIR"] = str(tmp_path / "models")  # none: the server starts unhealthy
        args, health = ["-m", f"model_servers.{kind}", "--port", str(port)], f"http://127.0.0.1:{port}/health"
    output = start_and_read_output(args, env, health, tmp_path / "out.log")
    warnings = [line for line in output.splitlines() if typo in line]
    assert len(warnings) == 1, output
    assert f"did you mean {real}?" in warnings[0]
    for name in shared:
        assert name not in output


def test_the_api_names_a_producer_token_it_does_not_read(tmp_path):
    port = free_port()
    env = {
        "TASKFLEET_PRODUCER_TOKEN": "p-secret",
        "TASKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}",
        "TASKFLEET_STORAGE_URL": (tmp_path / "storage").as_uri(),
    }
    output = start_and_read_output(
        ["-m", "task_api", "--port", str(port)], env, f"http://127.0.0.1:{port}/ready", tmp_path / "out.log"
    )
    assert re.search(r"TASKFLEET_PRODUCER_TOKEN is not read by the task API .*did you mean TASKFLEET_PRODUCER_TOKENS\?", output)
    assert "p-secret" not in output


def test_one_environment_for_every_process_kind_warns_none_of_them():
    every = {name: "x" for names in names_by_kind().values() for name in names}
    for kind in KINDS:
        assert unknown_name_warnings(kind, every) == []


def test_unknown_names_and_near_misses():
    assert unknown_name_warnings("api", {"TASKFLEET_ZZZ_TOP": "1", "PATH": "/bin"}) == [
        "TASKFLEET_ZZZ_TOP is not a setting of any taskfleet process and is ignored"
    ]
    # pydantic-settings reads names case-insensitively, so this is the API's own.
    assert unknown_name_warnings("api", {"taskfleet_lease_s": "5"}) == []
    # A singular or plural twin of an unset setting of this process is named, even though
    # another kind reads it: on the API that is the difference between open and closed.
    assert unknown_name_warnings("api", {"TASKFLEET_PRODUCER_TOKEN": "p"}) == [
        "TASKFLEET_PRODUCER_TOKEN is not read by the task API (it is for the client commands (submit, tasks, "
        "consumers, stats), taskfleet up); "
        "did you mean TASKFLEET_PRODUCER_TOKENS?"
    ]
    assert unknown_name_warnings("api", {"TASKFLEET_PRODUCER_TOKEN": "p", "TASKFLEET_PRODUCER_TOKENS": "p"}) == []
    assert unknown_name_warnings("submit", {"TASKFLEET_PRODUCER_TOKEN": "p"}) == []
    assert unknown_name_warnings("up", {"TASKFLEET_PRODUCER_TOKEN": "p"}) == []
    assert unknown_name_warnings("consumer", {"TASKFLEET_CONSUMER_TOKENS": "c"}) == [
        "TASKFLEET_CONSUMER_TOKENS is not read by the consumer (it is for the task API); "
        "did you mean TASKFLEET_CONSUMER_TOKEN?"
    ]
    # Suggestions prefer this process's own names.
    assert unknown_name_warnings("consumer", {"TASKFLEET_TTS_URL": "u"})[0].endswith("did you mean TASKFLEET_TTS_URLS?")


def test_every_name_the_project_and_its_deploy_files_use_is_read_by_some_process():
    known = frozenset().union(*names_by_kind().values())
    used: dict[str, set[str]] = {}
    for folder in ("taskfleet", "task_api", "consumer", "model_servers", "storage", "deploy"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix not in (".pyc", ".onnx"):
                for name in re.findall(r"TASKFLEET_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")):
                    used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert len(used) > 30
    assert {name: files for name, files in used.items() if name not in known} == {}
