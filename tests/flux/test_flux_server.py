"""The Flux server over real HTTP with a tiny random FLUX pipeline loaded from a diffusers folder."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from flux_faults import cpu_out_of_memory, cuda_out_of_memory

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "max_sequence_length": 32}


async def generate(server, expect: int = 200, **body) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        r = await client.post("/generate", json={"prompt": "a red cat", **SMALL, **body})
    assert r.status_code == expect, r.text
    return r.json()


def pixels(image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image["data"]))).convert("RGB"), dtype=np.int16)


def max_diff(a: dict, b: dict) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def mean_diff(a: dict, b: dict) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# One call with several images differs from single calls only by float reassociation (~1e-6 of the
# range): at most one 8-bit level. A different seed or LoRA moves pixels by tens of levels.
BATCH_TOLERANCE = 1
DIFFERENT = 5.0


async def test_health_reports_the_loaded_model(flux_server, tiny_flux):
    body = httpx.get(flux_server.url + "/health").json()
    assert body["status"] == "healthy"
    assert body["model_loaded"] is True
    assert body["device"] == "cpu"
    assert body["capacity"] == 8  # 2 GPU slots x 4 images per call
    assert body["models_directory"] == str(tiny_flux["model"])
    assert "FLUX.1-dev" in body["message"]


async def test_loras_are_listed(flux_server):
    assert httpx.get(flux_server.url + "/loras").json() == {"loras": ["broken", "style_a", "style_b"]}


async def test_same_seed_gives_the_same_image(flux_server):
    a = await generate(flux_server, seed=1234)
    b = await generate(flux_server, seed=1234)
    c = await generate(flux_server, seed=1235)
    assert a["images"][0]["seed"] == b["images"][0]["seed"] == 1234
    assert a["images"][0]["data"] == b["images"][0]["data"]
    assert mean_diff(a["images"][0], c["images"][0]) > DIFFERENT


async def test_random_seed_is_reported_and_reproduces_the_image(flux_server):
    a = await generate(flux_server, seed=-1)
    seed = a["images"][0]["seed"]
    assert 0 <= seed < 2**32
    b = await generate(flux_server, seed=seed)
    assert b["images"][0]["data"] == a["images"][0]["data"]


async def test_several_images_use_consecutive_seeds(flux_server):
    many = await generate(flux_server, seed=10, num_images=3)
    assert [img["seed"] for img in many["images"]] == [10, 11, 12]
    single = await generate(flux_server, seed=11)
    assert max_diff(many["images"][1], single["images"][0]) <= BATCH_TOLERANCE
    assert mean_diff(many["images"][0], many["images"][1]) > DIFFERENT


async def test_variant_defaults_fill_unset_parameters(flux_server):
    body = await generate(flux_server, seed=1, num_inference_steps=None, max_sequence_length=None)
    # The tiny model has a guidance embedding, so it is treated as FLUX.1-dev.
    assert body["model_variant"] == "dev"
    assert (body["num_inference_steps"], body["guidance_scale"], body["max_sequence_length"]) == (28, 3.5, 512)


async def test_a_schnell_folder_gets_schnell_defaults(start_flux_server, tiny_flux):
    # VAE tiling on as well: the tiny VAE's tiles are 32 px, so a 64 px image is decoded in tiles.
    server = start_flux_server(flux_model=str(tiny_flux["schnell"]), flux_vae_tiling=True, flux_cpu_threads=1)
    try:
        assert "FLUX.1-schnell" in server.wait_status(("healthy",))["message"]
        body = await generate(server, seed=1, num_inference_steps=None, max_sequence_length=None)
        assert body["model_variant"] == "schnell"
        assert (body["num_inference_steps"], body["guidance_scale"], body["max_sequence_length"]) == (4, 0.0, 256)
        assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]["data"]))).size == (64, 64)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("size", "expected", "rounded"),
    [
        ({"width": 70, "height": 100}, (64, 96), True),
        ({"width": 1000, "height": 72}, (1008, 80), True),
        ({"width": 128, "height": 64}, (128, 64), False),
        ({"width": None, "height": None, "aspect_ratio": "9:16"}, (768, 1360), False),
        ({"width": 200, "height": None, "aspect_ratio": "16:9"}, (208, 768), True),
    ],
)
async def test_sizes_are_rounded_to_multiples_of_16_and_reported(flux_server, size, expected, rounded):
    body = await generate(flux_server, seed=3, num_inference_steps=1, **size)
    img = body["images"][0]
    assert (body["width"], body["height"]) == expected
    assert (img["width"], img["height"]) == expected
    assert Image.open(io.BytesIO(base64.b64decode(img["data"]))).size == expected
    assert body["size_rounded"] is rounded
    if rounded:
        assert (body["requested_width"], body["requested_height"]) != expected


@pytest.mark.parametrize(("fmt", "pil_format", "ctype"), [("png", "PNG", "image/png"), ("jpg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp"), ("JPEG", "JPEG", "image/jpeg")])
async def test_output_formats(flux_server, fmt, pil_format, ctype):
    body = await generate(flux_server, seed=5, output_format=fmt)
    img = body["images"][0]
    assert img["content_type"] == ctype
    assert Image.open(io.BytesIO(base64.b64decode(img["data"]))).format == pil_format


async def test_lora_changes_the_image_and_weight_zero_restores_the_base(flux_server):
    base = (await generate(flux_server, seed=7))["images"][0]
    styled = await generate(flux_server, seed=7, lora_name="style_a", lora_weight=1.0)
    assert styled["lora_name"] == "style_a" and styled["lora_weight"] == 1.0
    assert mean_diff(styled["images"][0], base) > DIFFERENT
    half = (await generate(flux_server, seed=7, lora_name="style_a", lora_weight=0.5))["images"][0]
    assert mean_diff(half, base) > 1.0 and mean_diff(half, styled["images"][0]) > 1.0
    zero = (await generate(flux_server, seed=7, lora_name="style_a", lora_weight=0.0))["images"][0]
    assert zero["data"] == base["data"]
    # And switching back to no LoRA leaves no trace of it.
    again = (await generate(flux_server, seed=7))["images"][0]
    assert again["data"] == base["data"]


async def test_concurrent_requests_with_different_loras_each_get_their_own(flux_server):
    setups = {
        "base": {},
        "a": {"lora_name": "style_a", "lora_weight": 1.0},
        "b": {"lora_name": "style_b", "lora_weight": 1.0},
        "a_half": {"lora_name": "style_a", "lora_weight": 0.5},
    }
    refs = {k: (await generate(flux_server, seed=21, **v))["images"][0] for k, v in setups.items()}
    for x in refs:
        for y in refs:
            if x < y:
                assert mean_diff(refs[x], refs[y]) > 1.0, (x, y)
    order = ["a", "b", "base", "a", "b", "a_half", "base", "b", "a", "a_half", "b", "a"]
    results = await asyncio.gather(*(generate(flux_server, seed=21, **setups[k]) for k in order))
    for name, body in zip(order, results):
        got = body["images"][0]
        assert max_diff(got, refs[name]) <= BATCH_TOLERANCE, name
        for other in refs:
            if other != name:
                assert mean_diff(got, refs[other]) > 1.0, (name, other)


async def test_unknown_and_broken_loras_are_refused(flux_server):
    unknown = await generate(flux_server, expect=422, lora_name="missing")
    assert unknown["error"]["code"] == "lora_not_found"
    broken = await generate(flux_server, expect=422, lora_name="broken")
    assert broken["error"]["code"] == "lora_invalid"
    base = await generate(flux_server, seed=8)
    after = await generate(flux_server, seed=8, lora_name="style_b", lora_weight=0.0)
    assert after["images"][0]["data"] == base["images"][0]["data"]


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": ""},
        {"prompt": "   "},
        {"width": 10},
        {"height": 4096},
        {"num_images": 0},
        {"num_images": 9},
        {"num_inference_steps": 0},
        {"guidance_scale": -1},
        {"seed": -2},
        {"seed": 2**40},
        {"output_format": "bmp"},
        {"lora_name": "../style_a"},
        {"lora_name": "style_a", "lora_weight": 1.5},
        {"max_sequence_length": 1024},
        {"aspect_ratio": "4:3"},
        {"unknown_field": 1},
        {"width": "wide"},
    ],
)
async def test_bad_parameters_are_422(flux_server, bad):
    body = await generate(flux_server, expect=422, **bad)
    assert body["error"]["code"] == "validation_error"


async def test_missing_model_is_unhealthy_and_generate_is_503(tmp_path, start_flux_server):
    server = start_flux_server(flux_model=str(tmp_path / "nowhere"), lora_dir=str(tmp_path))
    try:
        health = httpx.get(server.url + "/health").json()
        assert health["status"] == "unhealthy"
        assert health["model_loaded"] is False
        assert str(tmp_path / "nowhere") in health["message"]
        r = httpx.post(server.url + "/generate", json={"prompt": "a cat"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_unavailable"
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503
        assert ready.json()["error"] == {"code": "model_unavailable", "message": health["message"]}
    finally:
        server.close()


async def test_folder_that_is_not_a_diffusers_model_is_unhealthy(tmp_path, start_flux_server):
    (tmp_path / "model").mkdir()
    server = start_flux_server(flux_model=str(tmp_path / "model"))
    try:
        health = httpx.get(server.url + "/health").json()
        assert health["status"] == "unhealthy"
        assert "model_index.json" in health["message"]
    finally:
        server.close()


async def test_overlapping_requests_on_two_slots_each_get_their_own_image(flux_server):
    # Different step counts and sizes never share a call, and with no LoRA both slots take work at
    # once: each request must still get exactly the image it gets alone.
    setups = [{"num_inference_steps": s, "width": w} for s in (1, 2, 3) for w in (64, 80)]
    refs = [(await generate(flux_server, seed=31, **kw))["images"][0] for kw in setups]
    for _ in range(3):
        results = await asyncio.gather(*(generate(flux_server, seed=31, **kw) for kw in setups))
        for kw, ref, body in zip(setups, refs, results):
            assert max_diff(body["images"][0], ref) <= BATCH_TOLERANCE, kw


async def test_loras_past_the_cap_are_unloaded_and_reloaded_when_asked_for(flux_server, start_flux_server, tiny_flux):
    plan = [("style_a", 1.0), ("style_b", 1.0), ("style_a", 0.7), (None, 1.0), ("style_b", 1.0)]
    refs = [(await generate(flux_server, seed=41, lora_name=n, lora_weight=w))["images"][0] for n, w in plan]
    server = start_flux_server(
        flux_model=str(tiny_flux["model"]), lora_dir=str(tiny_flux["loras"]), flux_max_loras=1, flux_cpu_threads=1
    )
    try:
        for (name, weight), ref in zip(plan, refs):
            got = (await generate(server, seed=41, lora_name=name, lora_weight=weight))["images"][0]
            assert max_diff(got, ref) <= BATCH_TOLERANCE, (name, weight)
        loaded = server.app.state.flux_engine.pipe.get_list_adapters()
        assert loaded == {"transformer": ["style_b"]}
    finally:
        server.close()


async def test_ready_unknown_routes_and_wrong_methods_answer_in_the_error_shape(flux_server):
    async with httpx.AsyncClient(base_url=flux_server.url) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        unknown = await client.get("/generate/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        wrong = await client.get("/generate")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        assert wrong.headers["allow"] == "POST"
        bad = await client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("fault", [cuda_out_of_memory, cpu_out_of_memory])
async def test_out_of_memory_is_a_500_with_its_own_code_not_an_outage(failing_flux, fault):
    failing_flux.fail_with(fault)
    body = await generate(failing_flux, expect=500)
    assert body["error"]["code"] == "out_of_memory"
    assert "allocate" in body["error"]["message"]
    # The server is not down: the next request (and the readiness probe) still gets through.
    assert httpx.get(failing_flux.url + "/ready").status_code == 200
    assert failing_flux.pipeline_calls == 1


@pytest.mark.parametrize(
    ("error", "status", "code"), [(MemoryError(), 500, "out_of_memory"), (ValueError("a bug"), 500, "internal_error")]
)
async def test_an_error_no_route_foresaw_still_answers_in_the_error_shape(flux_server, monkeypatch, error, status, code):
    def encode(*_):
        raise error

    monkeypatch.setattr("model_servers.flux.app.encode_image", encode)
    body = await generate(flux_server, expect=status)
    assert body["error"]["code"] == code


async def test_generate_reports_the_seconds_it_held_a_slot(flux_server):
    """Compute accounting: X-Compute-Seconds is the time the call held its slot (the batch it
    rode in), within the inference time the body reports and never more than the request."""
    async with httpx.AsyncClient(base_url=flux_server.url, timeout=120) as client:
        started = time.perf_counter()
        r = await client.post("/generate", json={"prompt": "a red cat", **SMALL, "seed": 7})
        wall = time.perf_counter() - started
        refused = await client.post("/generate", json={"prompt": ""})
    assert r.status_code == 200
    seconds = float(r.headers["x-compute-seconds"])
    assert 0 < seconds <= r.json()["inference_time_s"] + 1e-3 and seconds <= wall
    assert refused.status_code == 422 and float(refused.headers["x-compute-seconds"]) == 0.0
