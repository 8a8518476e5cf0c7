"""The tts processor against a real TTS server process, through the consumer's model-server client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from consumer.context import TaskContext
from consumer.errors import ModelServerUnavailable
from consumer.model_client import ModelServerPool
from consumer.processors.tts import process
from model_servers.tts.subtitles import parse_srt
from taskfleet.errors import TaskfleetError
from taskfleet.workflows import WorkflowRegistry
from taskfleet.workflows.tts import TTS, TtsOutput

from tts_helpers import check_srt_tiles, tts_server

TEXT = "Good morning. The fleet turns text into speech! Does it keep the timings?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tts_server(tmp_path_factory.mktemp("logs")) as s:
        yield s


class DirStorage:
    """The storage calls the processor makes, over a plain directory.

    (The real ``storage`` package cannot be imported here: pytest's ``pythonpath = ["tests"]`` lets
    the ``tests/storage`` folder shadow it. The end-to-end test runs the real one in the consumer.)
    """

    provider = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def output_key(self, workflow: str, task_id: str, name: str) -> str:
        return f"{workflow}/{task_id}/{name}"

    def local_path(self, key: str) -> Path:
        return self.root / key

    async def put_file(self, key: str, path: Path | bytes, content_type: str | None = None):
        from types import SimpleNamespace

        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path if isinstance(path, bytes) else Path(path).read_bytes())
        self.content_types[key] = content_type
        return SimpleNamespace(key=key, url=f"http://api.test/files/{key}", storage_url=dest.as_uri(), content_type=content_type)

    async def put_files(self, items):
        return [await self.put_file(key, path, content_type) for key, path, content_type in items]

    content_types: dict = {}


class FileFetcher:
    """Stands in for the SSRF-guarded fetcher: the tests' inputs are local bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def fetch(self, url: str, dest: Path, *, storage) -> int:
        dest.write_bytes(self.data)
        return len(self.data)


def make_ctx(tmp_path: Path, url: str, data: dict, fetcher=None) -> TaskContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return TaskContext(
        task_id="tsk_tts",
        workflow="tts",
        input=TTS.validate_input(data),
        attempt=1,
        workdir=work,
        storage=DirStorage(tmp_path / "store"),
        timeout_s=60,
        model_server_kind="tts",
        _fetcher=fetcher,
        _pools={"tts": ModelServerPool("tts", [url], breaker_reset_s=0.1).client(60)},
    )


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
async def test_audio_and_srt_are_stored_and_described(server, tmp_path, fmt):
    ctx = make_ctx(tmp_path, server.url, {"text": TEXT, "format": fmt, "speed": 1.25})
    out = TtsOutput.model_validate(await process(ctx))
    assert out.audio_url == f"http://api.test/files/tts/tsk_tts/speech.{fmt}"
    assert out.srt_url == "http://api.test/files/tts/tsk_tts/speech.srt"
    assert (out.format, out.engine, out.sample_rate, out.storage_provider) == (fmt, "espeak", 22050, "local")
    assert [s.text for s in out.sentences] == ["Good morning.", "The fleet turns text into speech!", "Does it keep the timings?"]
    audio = ctx.storage.local_path(f"tts/tsk_tts/speech.{fmt}")
    srt = ctx.storage.local_path("tts/tsk_tts/speech.srt").read_text(encoding="utf-8")
    check_srt_tiles(srt, out.duration_s, [s.text for s in out.sentences])
    assert ctx.storage.content_types[f"tts/tsk_tts/speech.{fmt}"] == {"wav": "audio/wav", "mp3": "audio/mpeg"}[fmt]
    assert ctx.storage.content_types["tts/tsk_tts/speech.srt"] == "application/x-subrip"
    if fmt == "wav":
        with wave.open(str(audio)) as w:
            assert abs(w.getnframes() / w.getframerate() - out.duration_s) < 0.002
    else:
        assert audio.read_bytes()[:3] == b"ID3"
    assert [c[0] for c in parse_srt(srt)][1:] == [s.start_s for s in out.sentences][1:]


@pytest.mark.parametrize("in_memory", [True, False], ids=["short_clip_in_memory", "long_clip_through_a_file"])
async def test_a_short_clip_needs_no_work_directory(server, tmp_path, monkeypatch, in_memory):
    import consumer.processors.tts as tts_processor
    from consumer.context import workdir_made

    if not in_memory:
        monkeypatch.setattr(tts_processor, "AUDIO_IN_MEMORY_MAX", 1000)  # any real clip is longer
    ctx = make_ctx(tmp_path, server.url, {"text": TEXT})
    out = TtsOutput.model_validate(await process(ctx))
    assert workdir_made(ctx) is not in_memory
    with wave.open(str(ctx.storage.local_path("tts/tsk_tts/speech.wav"))) as w:
        assert abs(w.getnframes() / w.getframerate() - out.duration_s) < 0.002


async def test_reference_audio_fails_the_task_without_retry(server, tmp_path):
    ctx = make_ctx(
        tmp_path, server.url, {"text": "Hi.", "reference_audio_url": "https://example.com/me.wav"},
        fetcher=FileFetcher(b"RIFF\x00\x00\x00\x00WAVE"),
    )
    with pytest.raises(TaskfleetError) as err:
        await process(ctx)
    assert err.value.code == "voice_cloning_unsupported" and err.value.retryable is False


async def test_unknown_voice_fails_without_retry(server, tmp_path):
    ctx = make_ctx(tmp_path, server.url, {"text": "Hi.", "voice": "no-such-voice"})
    with pytest.raises(TaskfleetError) as err:
        await process(ctx)
    assert err.value.code == "unknown_voice" and err.value.retryable is False


async def test_a_server_without_voices_releases_the_task(tmp_path):
    with tts_server(tmp_path, TASKFLEET_TTS_ENGINE="piper", TASKFLEET_VOICES_DIR=str(tmp_path / "no-voices")) as s:
        ctx = make_ctx(tmp_path, s.url, {"text": "Hi."})
        with pytest.raises(ModelServerUnavailable):
            await process(ctx)


def test_the_workflow_is_registered_and_validates():
    wf = WorkflowRegistry.from_entry_points().by_alias("tts")
    assert wf is TTS and wf.name == "tts" and wf.model_server == "tts"
    assert wf.validate_input({"text": "hi"}) == {
        "text": "hi", "language": None, "voice": None, "speed": 1.0, "format": "wav", "reference_audio_url": None,
    }
    for bad in ({"text": ""}, {"text": "  "}, {"text": "a" * 20_001}, {"text": "hi", "speed": 2.01},
                {"text": "hi", "format": "flac"}, {"text": "hi", "extra": 1}, {}):
        with pytest.raises(TaskfleetError) as err:
            wf.validate_input(bad)
        assert err.value.status == 422


def test_the_fleet_side_imports_no_onnxruntime_or_numpy():
    code = (
        "import sys; import consumer.processors.tts, taskfleet.workflows.tts; "
        "bad = [m for m in ('onnxruntime', 'piper', 'numpy') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_schemathesis_finds_no_server_error(server):
    """Malformed requests get a 4xx with a code, never a 5xx (docs/api.md, "Errors"), over the real socket."""
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [cli, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "30",
         "--phases", "examples,coverage,fuzzing", "--generation-deterministic", "--request-timeout", "60",
         "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
