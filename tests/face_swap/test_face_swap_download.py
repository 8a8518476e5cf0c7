"""`taskfleet models download face_swap`: pins, resume, progress, verify and offline failures, against
a real uvicorn on loopback that serves files with HTTP Range (Starlette's FileResponse)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from face_swap_helpers import LiveServer
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from model_servers.face_swap import download

ROOT = Path(__file__).resolve().parents[2]
SWAPPER = bytes(range(256)) * 400  # 102,400 bytes: several chunks, so a resume starts mid-file


class Recorder:
    """ASGI middleware keeping, per request, the path, the Range asked for, the status and bytes sent."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        entry = {"path": scope["path"], "range": Headers(scope=scope).get("range"), "sent": 0}
        self.requests.append(entry)

        async def recording_send(message):
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body":
                entry["sent"] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, recording_send)


@pytest.fixture
def served(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    (root / "swapper.onnx").write_bytes(SWAPPER)
    (root / "enhancer.onnx").write_bytes(b"pretend gfpgan " * 1000)
    with zipfile.ZipFile(root / "buffalo_l.zip", "w") as zf:
        zf.writestr("buffalo_l/det_10g.onnx", b"detector")
        zf.writestr("buffalo_l/w600k_r50.onnx", b"recognizer")
    cut: set[str] = set()

    async def cut_once(request):
        """The first answer for a file stops half-way and drops the connection; later ones are whole."""
        name = request.path_params["name"]
        if name in cut:
            return FileResponse(root / name)
        cut.add(name)
        data = (root / name).read_bytes()

        async def half(scope, receive, send):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(data)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            # Returning without the rest: uvicorn closes the connection short of Content-Length.

        return half

    app = Recorder(Starlette(routes=[Route("/cut/{name}", cut_once), Mount("/", StaticFiles(directory=root))]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with LiveServer(app, wait_loaded=False) as server:
        yield server.url, root, app.requests


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_manifest(tmp_path, url, root) -> str:
    """The default assets, pointed at the loopback server and pinned to its files."""
    entries = {
        "buffalo_l": {"url": f"{url}/buffalo_l.zip", "sha256": sha(root / "buffalo_l.zip"),
                      "size": (root / "buffalo_l.zip").stat().st_size},
        "inswapper_128_fp16": {"url": f"{url}/swapper.onnx", "sha256": sha(root / "swapper.onnx"), "size": len(SWAPPER)},
        "gfpgan_1.4": {"url": f"{url}/enhancer.onnx", "sha256": sha(root / "enhancer.onnx")},
    }  # fmt: skip
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(entries))
    return str(path)


def test_every_built_in_asset_carries_a_pinned_sha256_and_size():
    """Without pins every default file was refused, so the documented command installed nothing."""
    defaults = {a.name for a in download.MANIFEST if a.default}
    assert defaults == {"buffalo_l", "inswapper_128_fp16", "gfpgan_1.4"}
    for asset in download.MANIFEST:
        assert re.fullmatch(r"[0-9a-f]{64}", asset.sha256), asset.name
        assert asset.size and asset.size > 1_000_000, asset.name
    fp32 = next(a for a in download.MANIFEST if a.name == "inswapper_128")
    assert (fp32.sha256[:8], fp32.sha256[-7:], fp32.size) == ("e4a3f08c", "49e16af", 554_253_681)


def test_the_default_command_installs_every_default_asset_and_verifies(served, tmp_path, capsys):
    url, root, _ = served
    models = tmp_path / "models"
    manifest = ["--manifest", local_manifest(tmp_path, url, root)]
    assert download.run(["--models-dir", str(models), *manifest]) == 0
    assert (models / "inswapper_128_fp16.onnx").read_bytes() == SWAPPER
    assert (models / "gfpgan_1.4.onnx").read_bytes() == (root / "enhancer.onnx").read_bytes()
    assert (models / "models" / "buffalo_l" / "det_10g.onnx").read_bytes() == b"detector"  # top folder flattened
    assert not list(models.glob(".*.part"))
    capsys.readouterr()
    assert download.run(["--models-dir", str(models), "--verify", *manifest]) == 0, capsys.readouterr().err
    (models / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"tampered")
    assert download.run(["--models-dir", str(models), "--verify", *manifest]) == 1
    assert "det_10g.onnx: checksum mismatch" in capsys.readouterr().err


def test_progress_bar_shows_the_size_and_the_speed(served, tmp_path, capsys):
    url, root, _ = served
    rc = download.run([
        "--models-dir", str(tmp_path / "models"), "--only", "inswapper_128_fp16",
        "--url", f"inswapper_128_fp16={url}/swapper.onnx", "--sha256", f"inswapper_128_fp16={sha(root / 'swapper.onnx')}",
    ])  # fmt: skip
    assert rc == 0
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert bar.startswith("inswapper_128_fp16: 100%")
    assert "102k/102k" in bar  # bytes done / total, scaled
    assert re.search(r"[0-9.]+[kMG]?B/s", bar), bar  # transfer rate


def test_a_partial_file_is_resumed_with_a_range_request(served, tmp_path, capsys):
    url, root, requests = served
    models = tmp_path / "models"
    models.mkdir()
    asset = next(a for a in download.MANIFEST if a.name == "inswapper_128_fp16")
    download.part_path(models, asset).write_bytes(SWAPPER[:40_000])  # what an interrupted run left
    rc = download.run([
        "--models-dir", str(models), "--only", "inswapper_128_fp16",
        "--url", f"inswapper_128_fp16={url}/swapper.onnx", "--sha256", f"inswapper_128_fp16={sha(root / 'swapper.onnx')}",
    ])  # fmt: skip
    assert rc == 0
    assert (models / "inswapper_128_fp16.onnx").read_bytes() == SWAPPER
    assert [(r["range"], r["status"], r["sent"]) for r in requests] == [("bytes=40000-", 206, len(SWAPPER) - 40_000)]
    bars = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    assert "40.0k/102k" in bars[0] and "102k/102k" in bars[-1]  # the bar counts from what was already there


def test_a_part_file_already_whole_is_finished_without_downloading_it_again(served, tmp_path):
    url, root, requests = served
    models = tmp_path / "models"
    models.mkdir()
    (models / ".custom.part").write_bytes(SWAPPER)  # interrupted after the last byte, before the move
    args = ["--models-dir", str(models), "--no-progress", "--allow-unpinned", "--only", "custom",
            "--url", f"custom={url}/swapper.onnx"]  # fmt: skip
    assert download.run(args) == 0
    assert (models / "custom").read_bytes() == SWAPPER
    assert [(r["range"], r["status"], r["sent"]) for r in requests] == [(f"bytes={len(SWAPPER)}-", 416, 0)]


def test_a_transfer_that_breaks_mid_file_resumes_in_the_same_run(served, tmp_path):
    url, root, requests = served
    models = tmp_path / "models"
    rc = download.run([
        "--models-dir", str(models), "--no-progress", "--only", "inswapper_128_fp16",
        "--url", f"inswapper_128_fp16={url}/cut/swapper.onnx", "--sha256", f"inswapper_128_fp16={sha(root / 'swapper.onnx')}",
    ])  # fmt: skip
    assert rc == 0
    assert (models / "inswapper_128_fp16.onnx").read_bytes() == SWAPPER
    half = len(SWAPPER) // 2
    assert [(r["range"], r["sent"]) for r in requests] == [(None, half), (f"bytes={half}-", len(SWAPPER) - half)]


def test_a_part_file_of_another_file_is_dropped_not_resumed_forever(served, tmp_path, capsys):
    url, root, _ = served
    models = tmp_path / "models"
    models.mkdir()
    asset = next(a for a in download.MANIFEST if a.name == "inswapper_128_fp16")
    download.part_path(models, asset).write_bytes(b"x" * 40_000)
    args = [
        "--models-dir", str(models), "--no-progress", "--only", "inswapper_128_fp16",
        "--url", f"inswapper_128_fp16={url}/swapper.onnx", "--sha256", f"inswapper_128_fp16={sha(root / 'swapper.onnx')}",
    ]  # fmt: skip
    assert download.run(args) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not download.part_path(models, asset).exists()
    assert download.run(args) == 0  # the next run starts from scratch
    assert (models / "inswapper_128_fp16.onnx").read_bytes() == SWAPPER


def test_a_file_of_another_size_than_pinned_is_refused_before_it_downloads(served, tmp_path, capsys):
    url, _, _ = served
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"inswapper_128_fp16": {"url": f"{url}/swapper.onnx", "sha256": "0" * 64, "size": 5}}))
    models = tmp_path / "models"
    assert download.run(["--models-dir", str(models), "--no-progress", "--manifest", str(manifest),
                         "--only", "inswapper_128_fp16"]) == 1  # fmt: skip
    assert f"offers {len(SWAPPER)} bytes, the pinned file has 5" in capsys.readouterr().err
    assert not (models / "inswapper_128_fp16.onnx").exists()
    assert not list(models.glob(".*.part"))  # refused on the headers: no body was written


def test_installed_assets_are_not_fetched_again(served, tmp_path, capsys):
    url, root, requests = served
    models = tmp_path / "models"
    args = ["--models-dir", str(models), "--no-progress", "--manifest", local_manifest(tmp_path, url, root)]
    assert download.run(args) == 0
    fetched = len(requests)
    assert download.run(args) == 0
    assert len(requests) == fetched
    assert capsys.readouterr().out.count("already installed") == 3


def test_verify_fails_when_files_are_missing(served, tmp_path, capsys):
    """It used to report every file matching on an empty folder (an empty SHA256SUMS)."""
    url, root, _ = served
    models = tmp_path / "models"
    models.mkdir()
    assert download.run(["--models-dir", str(models), "--verify"]) == 1
    err = capsys.readouterr().err
    for name in ("buffalo_l", "inswapper_128_fp16", "gfpgan_1.4"):
        assert f"{name}: missing" in err
    # A run where every download was refused (nothing pinned) must not make the folder look verified.
    assert download.run(["--models-dir", str(models), "--no-progress", "--only", "custom", "--url",
                         f"custom={url}/swapper.onnx"]) == 1  # fmt: skip
    assert download.run(["--models-dir", str(models), "--verify"]) == 1
    # One asset installed, the others still missing.
    manifest = ["--manifest", local_manifest(tmp_path, url, root)]
    assert download.run(["--models-dir", str(models), "--no-progress", *manifest, "--only", "gfpgan_1.4"]) == 0
    capsys.readouterr()
    assert download.run(["--models-dir", str(models), "--verify", *manifest]) == 1
    err = capsys.readouterr().err
    assert "gfpgan_1.4" not in err and "inswapper_128_fp16: missing" in err
    assert download.run(["--models-dir", str(models), "--verify", *manifest, "--only", "gfpgan_1.4"]) == 0
    # Checked against the built-in pin, the test's stand-in file is not GFPGAN.
    assert download.run(["--models-dir", str(models), "--verify", "--only", "gfpgan_1.4"]) == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("host", ["127.0.0.1", "weights.invalid"])
def test_an_unreachable_host_fails_in_one_line_naming_it(tmp_path, host):
    """The documented command, offline: one line naming the host, non-zero exit, no traceback."""
    url = f"http://{host}:{closed_port()}/buffalo_l.zip"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.run(
        [sys.executable, "-m", "taskfleet.cli", "models", "download", "face_swap", "--models-dir", str(tmp_path),
         "--url", f"buffalo_l={url}", "--retries", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot reach {host} (buffalo_l): ")
    assert proc.stdout == ""


def test_checksum_mismatch_installs_nothing(served, tmp_path, capsys):
    url, _, _ = served
    models = tmp_path / "models"
    rc = download.run([
        "--models-dir", str(models), "--no-progress", "--only", "inswapper_128_fp16",
        "--url", f"inswapper_128_fp16={url}/swapper.onnx", "--sha256", "inswapper_128_fp16=" + "0" * 64,
    ])  # fmt: skip
    assert rc == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (models / "inswapper_128_fp16.onnx").exists()
    assert not list(models.glob(".*.part"))


def test_unpinned_is_refused_unless_allowed(served, tmp_path, capsys):
    url, root, _ = served
    models = tmp_path / "models"
    args = ["--models-dir", str(models), "--no-progress", "--only", "custom", "--url", f"custom={url}/swapper.onnx"]
    assert download.run(args) == 1
    assert "no SHA-256 pinned" in capsys.readouterr().err
    assert download.run(args + ["--allow-unpinned"]) == 0
    assert sha(root / "swapper.onnx") in capsys.readouterr().err  # printed so the operator can pin it
    assert (models / "custom").read_bytes() == SWAPPER


def test_http_errors_and_zip_slip_fail_cleanly(served, tmp_path):
    url, root, _ = served
    with zipfile.ZipFile(root / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", b"x")
    models = tmp_path / "models"
    assert download.run(["--models-dir", str(models), "--no-progress", "--allow-unpinned", "--only", "buffalo_l",
                          "--url", f"buffalo_l={url}/evil.zip", "--sha256", f"buffalo_l={sha(root / 'evil.zip')}"]) == 1  # fmt: skip
    assert not (tmp_path / "escape.txt").exists() and not (models / "escape.txt").exists()
    assert not list(models.glob(".*.part"))
    assert download.run(["--models-dir", str(models), "--no-progress", "--only", "gfpgan_1.4",
                          "--url", f"gfpgan_1.4={url}/missing.onnx"]) == 1  # fmt: skip


def test_main_exits_non_zero_on_failure(tmp_path):
    with pytest.raises(SystemExit) as info:
        download.main(["--models-dir", str(tmp_path), "--verify"])
    assert info.value.code == 1
