"""Fixtures for the Flux server tests: one tiny random FLUX pipeline per session, real uvicorn servers."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> dict[str, Path]:
    """A tiny FLUX.1-dev-shaped diffusers folder plus two LoRAs, built offline (~7 s, once)."""
    from model_servers.flux.tiny import build_tiny_flux, build_tiny_lora, tiny_transformer

    root = tmp_path_factory.mktemp("flux")
    model = build_tiny_flux(root / "model")
    loras = root / "loras"
    build_tiny_lora(model, loras / "style_a.safetensors", seed=1)
    build_tiny_lora(model, loras / "style_b.safetensors", seed=2)
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    # A FLUX.1-schnell-shaped copy: same parts, a transformer without the guidance embedding.
    schnell = root / "schnell"
    shutil.copytree(model, schnell)
    shutil.rmtree(schnell / "transformer")
    tiny_transformer(guidance_embeds=False).save_pretrained(schnell / "transformer")
    return {"model": model, "loras": loras, "schnell": schnell}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, app, wait_ready: bool = True) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        if wait_ready:
            self.wait_status(("healthy", "unhealthy"))

    def wait_status(self, statuses) -> dict:
        deadline = time.monotonic() + 120
        while True:
            body = httpx.get(self.url + "/health").json()
            if body["status"] in statuses or time.monotonic() > deadline:
                return body
            time.sleep(0.05)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def start_server(**settings) -> RunningServer:
    from model_servers.flux import FluxSettings, create_app

    return RunningServer(create_app(FluxSettings(**settings)))


@pytest.fixture(scope="session")
def start_flux_server():
    """Start a Flux server with the given settings; the test closes it."""
    return start_server


@pytest.fixture(scope="session")
def flux_server(tiny_flux):
    """Two GPU slots and batching on, so LoRA isolation and batching are both exercised."""
    server = start_server(
        flux_model=str(tiny_flux["model"]), lora_dir=str(tiny_flux["loras"]), gpu_slots=2, flux_max_batch=4,
        flux_cpu_threads=1,  # other test processes share the cores; see FluxSettings.flux_cpu_threads
    )
    assert server.wait_status(("healthy",))["status"] == "healthy"
    yield server
    server.close()


@pytest.fixture
def failing_flux(start_flux_server, tiny_flux):
    """A Flux server on the tiny model whose pipeline calls run ``server.fail_with(fault)``'s fault.

    The fault stands in for the diffusers call inside the real engine, so what it raises goes
    through the engine, the batcher and the routes as a real failure would; ``server.pipeline_calls``
    counts the calls.
    """
    server = start_flux_server(flux_model=str(tiny_flux["model"]), lora_dir=str(tiny_flux["loras"]), flux_cpu_threads=1)
    assert server.wait_status(("healthy",))["status"] == "healthy"
    server.pipeline_calls = 0

    def fail_with(fault) -> None:
        def pipeline_call(**_):
            server.pipeline_calls += 1
            fault()

        server.app.state.flux_engine._call_view = lambda: pipeline_call

    server.fail_with = fail_with
    yield server
    server.close()

