"""text_to_video end to end: the task API, one consumer process running every stage's workflow,
a TTS server process on espeak-ng, a Flux server on the tiny random model, local storage, and
the result read back with ffprobe and ffmpeg."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from model_servers.tts.subtitles import parse_srt
from support import LiveServer, ServerProcess, api_process, consumer_process, free_port, wait_done
from taskfleet.errors import TaskfleetError
from video_media import clip, close_to, ffmpeg, frame_at, probe, still, stream, tone

pytestmark = pytest.mark.timeout(300)

W, H, FPS = 128, 72, 10
SCRIPT = "The fleet is up. Every sentence becomes a picture. This last sentence is long enough to need two pictures."
BASE = {"script": SCRIPT, "size": f"{W}x{H}", "fps": FPS, "image": {"steps": 1}, "max_segment_s": 1.0, "speed": 1.5}


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    """A Flux server on the tiny random model, in this process so a test can make it refuse a
    prompt: ``flux.refuse`` (a word) fails any call whose prompt holds it; ``flux.prompts`` logs calls."""
    from model_servers.flux import FluxSettings, create_app
    from model_servers.flux.tiny import build_tiny_flux

    model = build_tiny_flux(tmp_path_factory.mktemp("flux") / "model")
    app = create_app(FluxSettings(flux_model=str(model), flux_cpu_threads=1, flux_max_batch=1))
    with LiveServer(app) as server:
        engine = app.state.flux_engine
        real_view = engine._call_view
        server.refuse, server.prompts = None, []

        def call_view():
            call = real_view()

            def run(**kwargs):
                server.prompts.extend(kwargs["prompt"])
                if server.refuse and any(server.refuse in p for p in kwargs["prompt"]):
                    raise TaskfleetError("the model refused this prompt", code="prompt_refused", status=422, retryable=False)
                return call(**kwargs)

            return run

        engine._call_view = call_view
        yield server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, flux):
    tmp = tmp_path_factory.mktemp("fleet")
    tts_port = free_port()
    tts = ServerProcess(
        "model_servers.tts", ["--host", "127.0.0.1", "--port", str(tts_port)], {"TASKFLEET_TTS_ENGINE": "espeak"}, "/health", tts_port
    )
    api = api_process(f"sqlite:///{tmp / 'tasks.db'}", tmp, TASKFLEET_BACKOFF_BASE_S="0.05", TASKFLEET_BACKOFF_MAX_S="0.2")
    with tts, api:
        consumer = consumer_process(
            api.url, tmp, "tts,image_gen,video_segments,video_compose",
            TASKFLEET_TTS_URLS=tts.url, TASKFLEET_FLUX_URLS=flux.url, TASKFLEET_CONCURRENCY="2",
        )  # fmt: skip
        with consumer, httpx.Client(base_url=api.url, timeout=60, trust_env=False) as client:
            yield client


@pytest.fixture(scope="module")
def uploads(fleet, tmp_path_factory) -> dict[str, str]:
    """Stock clip, logo and music uploaded through the API, as a producer would."""
    d = tmp_path_factory.mktemp("uploads")
    bad = d / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    files = {
        "stock": (clip(d / "green.mp4", "green", seconds=0.7), "video/mp4"),
        "logo": (still(d / "logo.png", "white", "32x32"), "image/png"),
        "music": (tone(d / "music.wav", 1.0, 1000), "audio/wav"),
        "broken": (bad, "video/mp4"),
    }
    urls = {}
    for name, (path, ctype) in files.items():
        r = fleet.post("/api/files", files={"file": (path.name, path.read_bytes(), ctype)})
        assert r.status_code == 201, r.text
        urls[name] = r.json()["url"]
    return urls


def run(client: httpx.Client, body: dict) -> dict:
    created = client.post("/api/video/create-task", json=body)
    assert created.status_code == 201, created.text
    return wait_done(client, created.json()["task_id"], timeout_s=240)


def download(client: httpx.Client, url: str, path: Path) -> Path:
    r = client.get(url)
    assert r.status_code == 200, url
    path.write_bytes(r.content)
    return path


def tone_power(path: Path, freq: int) -> float:
    """Spectral power at ``freq`` Hz (±2 Hz) of the file's audio, per second."""
    raw = ffmpeg("-i", str(path), "-map", "0:a", "-ac", "1", "-ar", "8000", "-f", "s16le", "pipe:1")
    samples = np.frombuffer(raw, np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    bins = np.fft.rfftfreq(samples.size, 1 / 8000)
    return float(spectrum[np.abs(bins - freq) <= 2].sum() / (samples.size / 8000))


@pytest.fixture(scope="module")
def full(fleet, uploads):
    """One run with every option: stock clips, logo, burned subtitles, music, a seed."""
    body = {**BASE, "stock_clips": [uploads["stock"]], "stock_ratio": 0.5, "logo_url": uploads["logo"],
            "logo_position": "top-right", "music_url": uploads["music"], "music_volume": 0.5, "seed": 5}  # fmt: skip
    return body, run(fleet, body)


def test_the_video_has_the_size_fps_audio_and_length_of_the_speech(fleet, full, tmp_path):
    _, task = full
    assert task["status"] == "COMPLETED", task
    out = task["output"]
    assert (out["width"], out["height"], out["fps"]) == (W, H, FPS)
    video = download(fleet, out["video_url"], tmp_path / "video.mp4")
    info = probe(video)
    v = stream(info, "video")
    assert (v["width"], v["height"], v["r_frame_rate"]) == (W, H, f"{FPS}/1")
    assert stream(info, "audio") is not None
    assert abs(float(info["format"]["duration"]) - out["speech_duration_s"]) <= 0.2
    assert [s["name"] for s in task["stages"]] == ["tts", "segments", "image", "compose"]
    assert all(s["status"] == "COMPLETED" for s in task["stages"])


def test_segments_tile_the_speech_and_stock_segments_show_the_stock_clip(fleet, full, tmp_path, uploads):
    _, task = full
    out = task["output"]
    segments = out["segments"]
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start_s"] == 0 and abs(segments[-1]["end_s"] - out["speech_duration_s"]) < 0.01
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segments, segments[1:]))
    assert all(s["end_s"] - s["start_s"] <= 1.0 + 1e-6 for s in segments)
    # The last sentence is longer than max_segment_s, so it spans several segments.
    assert sum(s["text"].startswith("This last sentence") for s in segments) >= 2
    stock = [s for s in segments if s["source"] == "stock"]
    generated = [s for s in segments if s["source"] == "generated"]
    assert len(stock) == int(len(segments) * 0.5 + 0.5) and all(s["url"] == uploads["stock"] for s in stock)
    assert generated and all("/image_gen/" in s["url"] for s in generated)  # image_gen's outputs reached compose
    image_stage = next(s for s in task["stages"] if s["name"] == "image")
    assert image_stage["total"] == len(generated)

    video = download(fleet, out["video_url"], tmp_path / "video.mp4")
    for s in stock:
        frame = frame_at(video, (s["start_s"] + s["end_s"]) / 2, W, H)
        assert close_to(frame[H // 2, W // 2], (0, 128, 0)), s
        # The logo (15% of the width, top right) is over the clip; the opposite corner is not.
        assert close_to(frame[12, W - 12], (255, 255, 255), 60) and close_to(frame[12, 12], (0, 128, 0))
    for s in generated:
        frame = frame_at(video, (s["start_s"] + s["end_s"]) / 2, W, H).astype(int)
        green = (np.abs(frame - np.array([0, 128, 0])) <= 40).all(axis=2).mean()
        assert green < 0.5, s


def test_srt_cues_are_in_order_and_cover_the_speech(fleet, full):
    _, task = full
    out = task["output"]
    cues = parse_srt(fleet.get(out["srt_url"]).text)
    assert cues and cues[0][0] == 0.0 and abs(cues[-1][1] - out["speech_duration_s"]) <= 0.01
    assert all(s0 < e0 <= s1 < e1 for (s0, e0, _), (s1, e1, _) in zip(cues, cues[1:]))
    assert " ".join(t.replace("\n", " ") for _, _, t in cues) == SCRIPT


def test_music_plays_under_the_speech(fleet, full, tmp_path):
    _, task = full
    out = task["output"]
    video = download(fleet, out["video_url"], tmp_path / "video.mp4")
    speech = download(fleet, out["audio_url"], tmp_path / "speech.wav")
    assert tone_power(video, 1000) > 10 * tone_power(speech, 1000)


def test_the_same_seed_gives_the_same_segment_sources_and_images(fleet, full, tmp_path):
    body, task = full
    again = run(fleet, {**{k: v for k, v in body.items() if k not in ("logo_url", "music_url")}, "subtitles": "soft"})
    assert again["status"] == "COMPLETED", again
    first, second = task["output"]["segments"], again["output"]["segments"]
    assert [(s["source"], s["start_s"], s["end_s"]) for s in first] == [(s["source"], s["start_s"], s["end_s"]) for s in second]
    assert [s["url"] for s in first if s["source"] == "stock"] == [s["url"] for s in second if s["source"] == "stock"]
    for a, b in zip(first, second):
        if a["source"] == "generated":
            assert fleet.get(a["url"]).content == fleet.get(b["url"]).content
    video = download(fleet, again["output"]["video_url"], tmp_path / "soft.mp4")
    assert stream(probe(video), "subtitle")["codec_name"] == "mov_text"


@pytest.mark.parametrize(
    "change",
    [{"script": ""}, {"script": "   "}, {"script": "x" * 20_001}, {"size": "big"}, {"size": "128x73"}, {"size": "30x30"}, {"size": "4098x100"},
     {"stock_ratio": 2}, {"subtitles": "loud"}, {"colour": "red"}],
)  # fmt: skip
def test_bad_input_is_refused_at_create(fleet, change):
    for path in ("/api/video/create-task", "/api/video/process"):
        r = fleet.post(path, json={**BASE, **change})
        assert r.status_code == 422, (path, change, r.text)
        assert r.json()["error"]["code"] == "invalid_input"


def test_an_unreadable_stock_clip_fails_the_pipeline_on_compose_without_a_retry(fleet, uploads):
    task = run(fleet, {**BASE, "stock_clips": [uploads["broken"]], "stock_ratio": 1})
    assert task["status"] == "FAILED", task
    error = task["error"]
    assert (error["code"], error["stage"], error["cause"]["code"]) == ("stage_failed", "compose", "invalid_stock_clip")
    assert fleet.get(f"/api/tasks/{error['task_id']}").json()["attempts"] == 1


def test_an_image_failure_fails_the_pipeline_and_a_retry_makes_only_the_missing_images(fleet, flux):
    script = "A calm lake at dawn. A red barn in snow. A STORM over the sea. A quiet forest path."
    flux.refuse = "STORM"
    try:
        task = run(fleet, {**BASE, "script": script, "max_segment_s": 30, "seed": 9})
    finally:
        flux.refuse = None
    assert task["status"] == "FAILED", task
    error = task["error"]
    assert (error["code"], error["stage"], error["cause"]["code"]) == ("stage_failed", "image", "prompt_refused")
    image_ids = next(s for s in task["stages"] if s["name"] == "image")["task_ids"]
    before = {i: fleet.get(f"/api/tasks/{i}").json() for i in image_ids}
    done_prompts = {t["input"]["prompt"] for t in before.values() if t["status"] == "COMPLETED"}
    tts_id = next(s for s in task["stages"] if s["name"] == "tts")["task_ids"][0]

    calls = len(flux.prompts)
    assert fleet.post(f"/api/tasks/{task['task_id']}/retry").status_code == 200
    task = wait_done(fleet, task["task_id"], timeout_s=240)
    assert task["status"] == "COMPLETED", task
    # Only the images that had not completed were generated again; the rest kept their outputs.
    regenerated = set(flux.prompts[calls:])
    assert "A STORM over the sea." in regenerated and not regenerated & done_prompts
    for i, old in before.items():
        if old["status"] == "COMPLETED":
            assert fleet.get(f"/api/tasks/{i}").json()["output"] == old["output"]
    assert fleet.get(f"/api/tasks/{tts_id}").json()["attempts"] == 1
    assert len(task["output"]["segments"]) == 4


def test_the_route_alias_process_waits_for_the_video(fleet):
    r = fleet.post("/api/video/process", params={"wait_s": 120}, json={**BASE, "script": "Short and sweet.", "subtitles": "none"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["video_url"] and out["segments"] and stream(probe_url(fleet, out["video_url"]), "subtitle") is None


def probe_url(client: httpx.Client, url: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return probe(download(client, url, Path(d) / "v.mp4"))
