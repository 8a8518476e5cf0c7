"""The video_compose processor with the real ffmpeg on tiny media: length, frames, sources, logo,
subtitles, music, and bad files refused without a retry."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest

from consumer.context import TaskContext
from consumer.errors import TaskCancelled
from consumer.processors.video_compose import build_command, frames_between, process
from taskfleet.errors import TaskfleetError
from video_media import audio_rms, clip, close_to, frame_at, probe, silence, still, stream, tone

pytestmark = pytest.mark.timeout(120)

W, H, FPS = 128, 72, 10
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 128, 0), (255, 255, 255)


class CopyFetcher:
    """Inputs are local files here; the consumer's real fetcher runs in the end-to-end test."""

    async def fetch(self, url: str, dest: Path, *, storage) -> int:
        shutil.copyfile(urlsplit(url).path, dest)
        return dest.stat().st_size


class DirStorage:
    provider = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def output_key(self, workflow: str, task_id: str, name: str) -> str:
        return f"{workflow}/{task_id}/{name}"

    async def put_file(self, key: str, path: Path, content_type: str | None = None):
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return SimpleNamespace(key=key, url=dest.as_uri(), storage_url=dest.as_uri(), content_type=content_type)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    srt = d / "speech.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,500\nFirst words here\n\n2\n00:00:01,500 --> 00:00:03,200\nSecond words here\n")
    bad = d / "logo.png"
    bad.write_bytes(b"this is not an image")
    return {
        "red": still(d / "red.png", "red"), "blue": still(d / "blue.png", "blue"),
        "green": clip(d / "green.mp4", "green"), "logo": still(d / "white.png", "white", "32x32"),
        "speech": silence(d / "speech.wav", 3.2), "music": tone(d / "music.wav", 1.0, 1000),
        "srt": srt, "not_media": bad,
    }  # fmt: skip


def image_output(path: Path) -> dict:
    return {"images": [{"url": path.as_uri()}]}


def compose_input(media: dict[str, Path], **settings) -> dict:
    """Three segments over 3.2 s of speech: red still, green stock clip, blue still."""
    return {
        "segments": [
            {"index": 0, "start_s": 0.0, "end_s": 1.0, "text": "First", "source": "generated"},
            {"index": 1, "start_s": 1.0, "end_s": 2.2, "text": "words", "source": "stock", "url": media["green"].as_uri()},
            {"index": 2, "start_s": 2.2, "end_s": 3.2, "text": "here", "source": "generated"},
        ],
        "images": [image_output(media["red"]), image_output(media["blue"])],
        "audio_url": media["speech"].as_uri(),
        "srt_url": media["srt"].as_uri(),
        "duration_s": 3.2,
        "settings": {"width": W, "height": H, "fps": FPS, "subtitles": "none", **settings},
    }


async def compose(tmp_path: Path, data: dict, cancel_after: int | None = None) -> tuple[dict, Path]:
    """Run the processor; ``cancel_after``: the producer cancels after that many progress reports."""
    reports = []

    def cancel_requested() -> bool:
        reports.append(1)
        return cancel_after is not None and len(reports) > cancel_after

    ctx = TaskContext(
        task_id="tsk_compose", workflow="video_compose", input=data, attempt=1, workdir=tmp_path / "work",
        storage=DirStorage(tmp_path / "store"), timeout_s=60, _fetcher=CopyFetcher(), _cancel_requested=cancel_requested,
    )  # fmt: skip
    out = await process(ctx)
    return out, Path(urlsplit(out["video_url"]).path)


def test_frames_add_up_to_the_speech_whatever_the_rounding():
    assert frames_between([(0, 1.04), (1.04, 2.06), (2.06, 3.2)], 3.2, 10) == [10, 11, 11]
    assert sum(frames_between([(0, 0.01), (0.01, 0.02), (0.02, 5.0)], 5.0, 25)) == 125
    # A segment shorter than a frame still gets one; the total stays the speech's.
    assert frames_between([(0, 0.01), (0.01, 0.02), (0.02, 5.0)], 5.0, 25)[:2] == [1, 1]


async def test_the_video_has_the_size_fps_frames_audio_and_length_of_the_speech(tmp_path, media):
    out, video = await compose(tmp_path, compose_input(media, motion="kenburns"))
    info = probe(video)
    v, a = stream(info, "video"), stream(info, "audio")
    assert (v["width"], v["height"], v["r_frame_rate"]) == (W, H, f"{FPS}/1")
    assert int(v["nb_read_frames"]) == 32 == out["frames"]
    assert a is not None and a["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 3.2) <= 0.2
    assert out["duration_s"] == 3.2 and [s["source"] for s in out["segments"]] == ["generated", "stock", "generated"]
    assert out["segments"][0]["url"] == media["red"].as_uri() and out["segments"][2]["url"] == media["blue"].as_uri()
    # Each segment shows its own source at its time: the still, the stock clip (looped past its
    # 1 s and cropped, not stretched, from 80x40), the other still.
    assert close_to(frame_at(video, 0.5, W, H)[H // 2, W // 2], RED)
    assert close_to(frame_at(video, 1.6, W, H)[H // 2, W // 2], GREEN)
    assert close_to(frame_at(video, 2.1, W, H)[H // 2, W // 2], GREEN)
    assert close_to(frame_at(video, 2.8, W, H)[H // 2, W // 2], BLUE)
    assert stream(info, "subtitle") is None


async def test_the_logo_sits_in_the_corner_asked_for(tmp_path, media):
    _, video = await compose(tmp_path, compose_input(media, logo_url=media["logo"].as_uri(), logo_position="bottom-left", motion="none"))
    frame = frame_at(video, 0.5, W, H)
    # Scaled to 15% of the frame's width (20 px) with a 2 px margin.
    assert close_to(frame[H - 12, 12], WHITE)
    assert close_to(frame[10, W - 12], RED) and close_to(frame[H - 12, W - 12], RED) and close_to(frame[10, 12], RED)


async def test_burned_subtitles_change_the_picture_and_soft_ones_are_a_track(tmp_path, media):
    _, plain = await compose(tmp_path / "plain", compose_input(media, motion="none"))
    _, burned = await compose(tmp_path / "burn", compose_input(media, motion="none", subtitles="burn"))
    _, soft = await compose(tmp_path / "soft", compose_input(media, motion="none", subtitles="soft"))
    bottom = slice(H // 2, H)
    assert (frame_at(plain, 0.5, W, H)[bottom] != frame_at(burned, 0.5, W, H)[bottom]).any()
    assert (frame_at(plain, 0.5, W, H) == frame_at(soft, 0.5, W, H)).all()
    track = stream(probe(soft), "subtitle")
    assert track is not None and track["codec_name"] == "mov_text"
    assert stream(probe(burned), "subtitle") is None


async def test_music_plays_under_the_speech_only_when_asked(tmp_path, media):
    _, quiet = await compose(tmp_path / "quiet", compose_input(media, motion="none"))
    _, music = await compose(tmp_path / "music", compose_input(media, motion="none", music_url=media["music"].as_uri(), music_volume=0.5))
    info = probe(music)
    assert audio_rms(quiet) < 1 and audio_rms(music) > 1000
    # The 1 s track loops to the speech's length, and the video stays the speech's length.
    assert abs(float(info["format"]["duration"]) - 3.2) <= 0.2


@pytest.mark.parametrize("option, code", [("logo_url", "invalid_logo"), ("music_url", "invalid_music")])
async def test_a_file_that_is_not_media_fails_without_a_retry(tmp_path, media, option, code):
    with pytest.raises(TaskfleetError) as err:
        await compose(tmp_path, compose_input(media, **{option: media["not_media"].as_uri()}))
    assert err.value.code == code and err.value.retryable is False


async def test_an_unreadable_stock_clip_fails_without_a_retry(tmp_path, media):
    data = compose_input(media)
    data["segments"][1]["url"] = media["not_media"].as_uri()
    with pytest.raises(TaskfleetError) as err:
        await compose(tmp_path, data)
    assert err.value.code == "invalid_stock_clip" and err.value.retryable is False


def test_one_ffmpeg_streams_every_input_to_one_file(tmp_path, media):
    from consumer.processors.video_compose import Media
    from taskfleet.workflows.video import ComposeSettings

    m = Media(speech=media["speech"], segments=[media["red"], media["green"]], stock=[False, True])
    command = build_command("ffmpeg", m, [10, 22], ComposeSettings(width=W, height=H, fps=FPS), 3.2, tmp_path / "v.mp4")
    # No frames piped through Python: inputs are files, the output is a file, stdout carries progress.
    assert command.count("-i") == 3 and command[-1] == str(tmp_path / "v.mp4") and "pipe:1" in command


async def test_a_cancel_while_ffmpeg_runs_stops_it_and_stores_nothing(tmp_path, media):
    # Reports 1 and 2 come before ffmpeg starts; the third is its first progress line.
    with pytest.raises(TaskCancelled):
        await compose(tmp_path, compose_input(media), cancel_after=2)
    assert not (tmp_path / "store").exists()


async def test_the_checks_name_the_first_bad_file_among_many(tmp_path, media):
    from consumer.processors.video_compose import Media, MediaInvalid, check_media

    # More files than one check run takes: the bad ones sit inside later runs, not first in them.
    images = []
    for i in range(70):
        images.append(tmp_path / f"image_{i:02d}.png")
        shutil.copyfile(media["red"], images[-1])
    truncated = media["red"].read_bytes()[:60]  # a PNG's signature and header, then nothing
    images[45].write_bytes(truncated)
    images[61].write_bytes(truncated)
    m = Media(speech=media["speech"], segments=images, stock=[False] * len(images))
    with pytest.raises(MediaInvalid) as err:
        await check_media("ffmpeg", m)
    assert err.value.code == "invalid_image" and err.value.retryable is False
    assert "image_45.png" in err.value.message
    images[45].write_bytes(media["red"].read_bytes())
    images[61].write_bytes(media["red"].read_bytes())
    await check_media("ffmpeg", m)  # all good: no error


async def test_inputs_are_fetched_side_by_side_and_one_failure_stops_the_rest(tmp_path, media):
    import asyncio

    from consumer.processors.video_compose import FETCH_CONCURRENCY, fetch_media, with_image_urls
    from taskfleet.workflows.video import ComposeInput

    class SlowFetcher(CopyFetcher):
        def __init__(self, fail: str | None = None) -> None:
            self.now, self.most, self.fail = 0, 0, fail

        async def fetch(self, url: str, dest: Path, *, storage) -> int:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await asyncio.sleep(0.05)
                if url == self.fail:
                    raise TaskfleetError("gone", code="input_unavailable", status=422, retryable=False)
                await asyncio.sleep(0.05)
                return await super().fetch(url, dest, storage=storage)
            finally:
                self.now -= 1

    data = compose_input(media)
    data["segments"] = [
        {"index": i, "start_s": i * 0.2, "end_s": (i + 1) * 0.2, "text": "w", "source": "generated"} for i in range(16)
    ]
    copies = []
    for i in range(16):  # distinct URLs, so each is its own download
        copies.append(tmp_path / f"still_{i}.png")
        shutil.copyfile(media["red"], copies[-1])
    data["images"] = [image_output(p) for p in copies]
    inp = ComposeInput.model_validate(data)
    segments = with_image_urls(inp.segments, inp.images)

    def context(fetcher, name):
        return TaskContext(
            task_id="tsk_fetch", workflow="video_compose", input=data, attempt=1, workdir=tmp_path / name,
            storage=DirStorage(tmp_path / "store"), timeout_s=60, _fetcher=fetcher,
        )  # fmt: skip

    fetcher = SlowFetcher()
    m = await fetch_media(context(fetcher, "ok"), inp, segments)
    assert 1 < fetcher.most <= FETCH_CONCURRENCY
    assert [p.read_bytes() for p in m.segments] == [media["red"].read_bytes()] * 16 and m.speech.exists()

    fetcher = SlowFetcher(fail=copies[3].as_uri())
    with pytest.raises(TaskfleetError) as err:
        await fetch_media(context(fetcher, "failing"), inp, segments)
    assert err.value.code == "input_unavailable"
    assert fetcher.now == 0  # nothing still downloading once the error is raised


async def test_ken_burns_moves_a_still_and_motion_none_holds_it(tmp_path, media):
    from video_media import ffmpeg

    pattern = tmp_path / "pattern.png"  # detail everywhere, so a zoom shows in every part of the frame
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={W}x{H}", "-frames:v", "1", str(pattern))
    data = compose_input(media)
    data["images"] = [image_output(pattern), image_output(pattern)]

    def change(video: Path, a: float, b: float) -> float:
        return float(np.abs(frame_at(video, a, W, H).astype(int) - frame_at(video, b, W, H).astype(int)).mean())

    _, moving = await compose(tmp_path / "kenburns", {**data, "settings": {**data["settings"], "motion": "kenburns"}})
    _, held = await compose(tmp_path / "none", {**data, "settings": {**data["settings"], "motion": "none"}})
    # Segment 0 (0-1 s) zooms in and segment 2 (2.2-3.2 s) zooms out: their first and last frames differ.
    assert change(moving, 0.0, 0.9) > 4 * max(1.0, change(held, 0.0, 0.9))
    assert change(moving, 2.2, 3.0) > 4 * max(1.0, change(held, 2.2, 3.0))
