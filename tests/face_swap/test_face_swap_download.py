"""`taskfleet models download face_swap`: checksums, zips and SHA256SUMS, against a loopback server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from model_servers.face_swap import download


@pytest.fixture
def served(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    (root / "swapper.onnx").write_bytes(b"pretend onnx " * 1000)
    with zipfile.ZipFile(root / "buffalo_l.zip", "w") as zf:
        zf.writestr("buffalo_l/det_10g.onnx", b"detector")
        zf.writestr("buffalo_l/w600k_r50.onnx", b"recognizer")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pinned_files_install_and_verify(served, tmp_path):
    url, root = served
    models = tmp_path / "models"
    rc = download.run([
        "--models-dir", str(models), "--no-progress", "--only", "inswapper_128_fp16", "buffalo_l",
        "--url", f"inswapper_128_fp16={url}/swapper.onnx", "--sha256", f"inswapper_128_fp16={sha(root / 'swapper.onnx')}",
        "--url", f"buffalo_l={url}/buffalo_l.zip", "--sha256", f"buffalo_l={sha(root / 'buffalo_l.zip')}",
    ])  # fmt: skip
    assert rc == 0
    assert (models / "inswapper_128_fp16.onnx").read_bytes() == (root / "swapper.onnx").read_bytes()
    assert (models / "models" / "buffalo_l" / "det_10g.onnx").read_bytes() == b"detector"  # top folder flattened
    assert not list(models.glob(".*.part"))
    assert download.run(["--models-dir", str(models), "--verify"]) == 0
    (models / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"tampered")
    assert download.run(["--models-dir", str(models), "--verify"]) == 1


def test_checksum_mismatch_installs_nothing(served, tmp_path, capsys):
    url, _ = served
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
    url, root = served
    models = tmp_path / "models"
    args = ["--models-dir", str(models), "--no-progress", "--only", "gfpgan_1.4", "--url", f"gfpgan_1.4={url}/swapper.onnx"]
    assert download.run(args) == 1
    assert "no SHA-256 pinned" in capsys.readouterr().err
    assert download.run(args + ["--allow-unpinned"]) == 0
    assert sha(root / "swapper.onnx") in capsys.readouterr().err  # printed so the operator can pin it
    assert (models / "gfpgan_1.4.onnx").is_file()


def test_http_errors_and_zip_slip_fail_cleanly(served, tmp_path):
    url, root = served
    with zipfile.ZipFile(root / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", b"x")
    models = tmp_path / "models"
    assert download.run(["--models-dir", str(models), "--no-progress", "--allow-unpinned", "--only", "buffalo_l",
                          "--url", f"buffalo_l={url}/evil.zip"]) == 1  # fmt: skip
    assert not (tmp_path / "escape.txt").exists() and not (models / "escape.txt").exists()
    assert download.run(["--models-dir", str(models), "--no-progress", "--allow-unpinned", "--only", "gfpgan_1.4",
                          "--url", f"gfpgan_1.4={url}/missing.onnx"]) == 1  # fmt: skip


def test_main_exits_non_zero_on_failure(tmp_path):
    with pytest.raises(SystemExit) as info:
        download.main(["--models-dir", str(tmp_path), "--verify"])
    assert info.value.code == 1
