"""The face-swap server over real HTTP: images, videos through ffmpeg pipes, limits, errors, health."""

from __future__ import annotations

import subprocess

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

import face_swap_tiny
from face_swap_helpers import OutOfMemoryEngine, count_frames, post_process, settings_for, stream_types, video_codec
from model_servers.face_swap.app import create_app
from model_servers.face_swap.media import probe_video
from support import LiveServer


def test_lite_image_swap_in_requested_formats(lite_server, photos):
    status, events, files = post_process(
        lite_server.url, photos["hopper"], photos["astronaut"], {"output_formats": ["png", "webp"]}
    )
    assert status == 200
    (kind, result), = [e for e in events if e[0] == "result"]
    assert [o["name"] for o in result["outputs"]] == ["output.png", "output.webp"]
    assert [o["role"] for o in result["outputs"]] == ["main", "extra"]
    meta = result["metadata"]
    assert meta["faces_detected"] == 1 and meta["frames_processed"] == 1 and meta["engine"] == "lite"
    assert result["processing_time"] > 0
    out = cv2.imread(str(files["output.png"]))
    original = cv2.imread(str(photos["astronaut"]))
    assert out.shape == original.shape and (out != original).any()
    assert cv2.imread(str(files["output.webp"])).shape == original.shape
    assert files["output.png"].stat().st_size == result["outputs"][0]["size"]


def test_resolution_fits_inside_the_box(lite_server, photos):
    status, events, files = post_process(lite_server.url, photos["hopper"], photos["astronaut"], {"resolution": "256x200"})
    assert status == 200
    assert cv2.imread(str(files["output.png"])).shape[:2] == (200, 200)  # 512x512 fitted into 256x200


def test_video_with_audio_keeps_frames_fps_and_audio(lite_server, photos, clips, tools):
    status, events, files = post_process(
        lite_server.url, photos["astronaut"], clips["audio"], {"keep_fps": True, "output_formats": ["mp4", "gif", "webp"]}
    )
    assert status == 200, events
    progress = [v for k, v in events if k == "progress"]
    assert len(progress) >= 3  # 50 frames, a report every 10
    assert [p["percent"] for p in progress] == sorted(p["percent"] for p in progress)
    (_, result), = [e for e in events if e[0] == "result"]
    meta = result["metadata"]
    out = files["output.mp4"]
    assert count_frames(tools, out) == count_frames(tools, clips["audio"]) == meta["frames_processed"] == 50
    info = probe_video(out, tools)
    assert abs(info.fps - 25) < 0.01 and meta["fps"] == 25
    assert stream_types(tools, out) == ["video", "audio"] and meta["audio"] is True
    assert meta["faces_detected"] == 1 and abs(meta["duration_seconds"] - 2.0) < 0.05
    assert files["preview.gif"].read_bytes()[:6] == b"GIF89a"
    assert files["preview.webp"].read_bytes()[8:12] == b"WEBP"
    # The swap really happened in the frames (not a pass-through).
    first_in = _first_frame(tools, clips["audio"])
    first_out = _first_frame(tools, out)
    assert abs(first_in.astype(int) - first_out).mean() > 1


def _first_frame(tools, path):
    raw = subprocess.run(
        [tools.ffmpeg, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(256, 256, 3)


def test_video_without_audio_gives_a_silent_video_at_30fps(lite_server, photos, clips, tools):
    status, events, files = post_process(
        lite_server.url, photos["astronaut"], clips["silent"], {"keep_fps": False, "resolution": "200x150"}
    )
    assert status == 200, events
    out = files["output.mp4"]
    assert stream_types(tools, out) == ["video"]
    info = probe_video(out, tools)
    assert abs(info.fps - 30) < 0.01
    assert (info.width, info.height) == (150, 150)  # 256x256 fitted into 200x150
    assert abs(count_frames(tools, out) - 36) <= 1  # 1.2 s at 30 fps (the source was 24 fps)
    (_, result), = [e for e in events if e[0] == "result"]
    assert result["metadata"]["audio"] is False


def test_too_long_is_refused_before_processing(lite_server, photos, clips):
    status, body, _ = post_process(lite_server.url, photos["astronaut"], clips["long"])
    assert status == 422 and body["error"]["code"] == "video_too_long"  # 4 s against a 3 s limit


def test_too_big_is_refused_while_uploading(insight_server, tmp_path, photos):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (3 << 20))  # the server's cap is 1 MB per file
    status, body, _ = post_process(insight_server.url, photos["hopper"], big)
    assert status == 413 and body["error"]["code"] == "input_too_large"


@pytest.mark.parametrize(
    "content,code",
    [
        (b"hello, this is not an image", "unsupported_media"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 200, "invalid_media"),  # a JPEG header, then garbage
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "invalid_media"),
        (b"", "invalid_media"),
    ],
)
def test_bad_target_gets_a_clear_code(lite_server, tmp_path, photos, content, code):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    status, body, _ = post_process(lite_server.url, photos["hopper"], bad)
    assert status == 422 and body["error"]["code"] == code


def test_no_face_in_source_or_target(lite_server, photos):
    status, body, _ = post_process(lite_server.url, photos["noface"], photos["astronaut"])
    assert status == 422 and body["error"]["code"] == "no_source_face"
    status, body, _ = post_process(lite_server.url, photos["hopper"], photos["noface"])
    assert status == 422 and body["error"]["code"] == "no_target_face"


def test_video_as_source_and_bad_requests(lite_server, photos, clips):
    status, body, _ = post_process(lite_server.url, clips["silent"], photos["astronaut"])
    assert status == 422 and body["error"]["code"] == "unsupported_media"
    status, body, _ = post_process(lite_server.url, photos["hopper"], photos["astronaut"], {"video_quality": 101})
    assert status == 422 and body["error"]["code"] == "invalid_options"
    r = httpx.post(lite_server.url + "/process", json={"source_url": "x"}, trust_env=False)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    with open(photos["hopper"], "rb") as fh:
        r = httpx.post(lite_server.url + "/process", files={"source": ("s", fh)}, trust_env=False)
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_file"


def test_insightface_server_end_to_end_on_tiny_models(insight_server, tmp_path):
    src, tgt = tmp_path / "s.png", tmp_path / "t.jpg"
    cv2.imwrite(str(src), face_swap_tiny.face_canvas([(8, 8, (230, 200, 180))]))
    cv2.imwrite(str(tgt), face_swap_tiny.face_canvas([(4, 4, (245, 245, 245)), (14, 12, (205, 205, 205))]))
    status, events, files = post_process(insight_server.url, src, tgt, {"many_faces": True, "face_enhancer": True})
    assert status == 200, events
    (_, result), = [e for e in events if e[0] == "result"]
    assert result["metadata"]["faces_detected"] == 2 and result["metadata"]["face_enhanced"] is True
    assert list(files) == ["output.jpg"]  # the target's own format by default
    health = httpx.get(insight_server.url + "/health", trust_env=False).json()
    assert health["status"] == "healthy" and health["model_loaded"] is True
    assert health["capacity"] == 1 and health["in_flight"] == 0 and health["device"] == "cpu"


def test_missing_models_unhealthy_and_503(tmp_path, photos):
    with LiveServer(create_app(settings_for(tmp_path))) as server:
        health = httpx.get(server.url + "/health", trust_env=False).json()
        assert health["status"] == "unhealthy" and "models missing" in health["message"]
        assert health["model_loaded"] is False and health["models_directory"] == str(tmp_path)
        status, body, _ = post_process(server.url, photos["hopper"], photos["astronaut"])
        assert status == 503 and body["error"]["code"] == "model_unavailable"
        ready = httpx.get(server.url + "/ready", trust_env=False)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_unavailable"
        assert "models missing" in ready.json()["error"]["message"]


def test_ready_unknown_routes_and_wrong_methods_answer_in_the_error_shape(lite_server):
    ready = httpx.get(lite_server.url + "/ready", trust_env=False)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    unknown = httpx.get(lite_server.url + "/swap", trust_env=False)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong = httpx.get(lite_server.url + "/process", trust_env=False)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_image_target_gets_a_one_frame_gif_beside_its_image_and_no_mp4(lite_server, photos):
    status, events, files = post_process(lite_server.url, photos["hopper"], photos["astronaut"], {"output_formats": ["gif", "mp4"]})
    assert status == 200
    # The main output stays an image (the target's own format when no image format was asked for).
    assert list(files) == ["output.png", "output.gif"]
    with Image.open(files["output.gif"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 1 and gif.size == (512, 512)


def test_image_target_in_jpg_gif_and_webp(lite_server, photos):
    status, events, files = post_process(
        lite_server.url, photos["hopper"], photos["astronaut"], {"output_formats": ["jpg", "gif", "webp"]}
    )
    assert status == 200, events
    (_, result), = [e for e in events if e[0] == "result"]
    assert [(o["name"], o["content_type"], o["role"]) for o in result["outputs"]] == [
        ("output.jpg", "image/jpeg", "main"), ("output.gif", "image/gif", "extra"), ("output.webp", "image/webp", "extra"),
    ]
    jpg = cv2.imread(str(files["output.jpg"]))
    with Image.open(files["output.gif"]) as gif:
        assert gif.n_frames == 1
        still = cv2.cvtColor(np.asarray(gif.convert("RGB")), cv2.COLOR_RGB2BGR)
    # The gif is the swapped picture, not the target: its face is the jpg's, not the original's.
    original = cv2.imread(str(photos["astronaut"]))
    face = (slice(70, 170), slice(180, 260))
    assert np.abs(still[face].astype(int) - jpg[face]).mean() < np.abs(still[face].astype(int) - original[face]).mean() / 2
    assert cv2.imread(str(files["output.webp"])).shape == jpg.shape


def test_video_encoder_and_quality_change_the_output(lite_server, photos, clips, tools):
    outputs = {}
    for label, options in {
        "h264 low": {"video_quality": 10},
        "h264 high": {"video_quality": 100},
        "hevc low": {"video_quality": 10, "video_encoder": "libx265"},
    }.items():
        status, events, files = post_process(lite_server.url, photos["astronaut"], clips["silent"], options)
        assert status == 200, (label, events)
        outputs[label] = files["output.mp4"]
    assert video_codec(tools, outputs["h264 low"]) == ("h264", "avc1")
    assert video_codec(tools, outputs["hevc low"]) == ("hevc", "hvc1")
    assert count_frames(tools, outputs["hevc low"]) == count_frames(tools, outputs["h264 low"])
    # Quality 100 is CRF 0 (lossless), quality 10 is CRF 46: an order of magnitude apart.
    assert outputs["h264 high"].stat().st_size > 5 * outputs["h264 low"].stat().st_size


def test_keep_audio_false_drops_the_audio_of_a_clip_that_has_some(lite_server, photos, clips, tools):
    assert stream_types(tools, clips["audio"]) == ["video", "audio"]
    status, events, files = post_process(lite_server.url, photos["astronaut"], clips["audio"], {"keep_audio": False})
    assert status == 200, events
    assert stream_types(tools, files["output.mp4"]) == ["video"]
    (_, result), = [e for e in events if e[0] == "result"]
    assert result["metadata"]["audio"] is False and result["metadata"]["frames_processed"] == 50


def test_out_of_memory_is_a_retryable_failure_with_its_own_code(tmp_path, photos, clips):
    engine = OutOfMemoryEngine()
    with LiveServer(create_app(settings_for(tmp_path), engine=engine)) as server:
        # An image fails before anything was sent: a plain HTTP error the consumer counts as an attempt.
        status, body, _ = post_process(server.url, photos["hopper"], photos["astronaut"])
        assert status == 500 and body["error"]["code"] == "out_of_memory"
        assert "Failed to allocate memory" in body["error"]["message"]
        # A video fails after its first progress part: the error part says the same, and retryable.
        status, events, files = post_process(server.url, photos["hopper"], clips["silent"])
        assert status == 200 and events[0][0] == "progress" and not files
        kind, part = events[-1]
        assert kind == "error" and part["error"]["code"] == "out_of_memory"
        assert part["retryable"] is True and part["status"] == 500
        # Running out of memory is not an outage: the server stays ready for the next job.
        assert httpx.get(server.url + "/ready", trust_env=False).status_code == 200
        assert engine.jobs == 2


def test_jobs_use_the_servers_scratch_folder_and_a_killed_servers_leftovers_go(tmp_path, photos):
    import time

    from taskfleet.scratch import LOCK_SUFFIX

    work = tmp_path / "work"
    # What a SIGKILLed face swap server leaves: its folder, and a lock file nobody holds any more.
    left = work / "faceswap-1-dead"
    (left / "job-x").mkdir(parents=True)
    (left / "job-x" / "frames.raw").write_bytes(b"\0" * 1024)
    (work / f"faceswap-1-dead{LOCK_SUFFIX}").touch()
    (tmp_path / "empty").mkdir()
    settings = settings_for(tmp_path / "empty", face_swap_engine="lite", work_dir=str(work))
    with LiveServer(create_app(settings)) as server:
        assert not left.exists()
        [own] = [p for p in work.iterdir() if p.is_dir()]
        status, _, _ = post_process(server.url, photos["hopper"], photos["astronaut"])
        assert status == 200
        deadline = time.monotonic() + 5
        while list(own.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(own.iterdir()) == []  # the job's folder went with its answer
    assert list(work.iterdir()) == []  # a clean stop removes the server's own folder and lock
