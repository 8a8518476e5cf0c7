"""Pure logic of the Flux server: the batcher with a stand-in engine (what shares a call, when LoRAs switch), sizes, variants."""

from __future__ import annotations

import asyncio
import threading

import pytest

from model_servers.base import OutOfMemory
from model_servers.flux.batcher import Batcher, CallParams
from model_servers.flux.engine import detect_variant, round_size
from taskfleet.errors import InvalidInput
from taskfleet.workflows.image_gen import ImageGenInput


def params(lora: str | None = None, weight: float = 1.0, width: int = 64) -> CallParams:
    return CallParams(width, 64, 2, 3.5, 32, lora, weight)


class FakeEngine:
    """Records every call; ``gate`` holds calls on the worker thread until the test lets them go."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[list[str], list[int], int]] = []
        self.events: list[tuple] = []
        self.running = 0
        self.active: tuple | None = None
        self.lock = threading.Lock()
        self.fail_prompt: str | None = None
        self.max_images: int | None = None  # a call with more images runs out of memory
        self.oom_prompt: str | None = None  # a prompt that runs out of memory even alone

    def use_lora(self, name, weight):
        with self.lock:
            self.events.append(("switch", (name, weight) if name else None, self.running))
            if name == "broken":
                raise InvalidInput("bad lora", code="lora_invalid")
            self.active = (name, weight) if name else None

    def generate(self, prompts, seeds, **kw):
        with self.lock:
            self.running += 1
            self.calls.append((list(prompts), list(seeds), kw["width"]))
            self.events.append(("run", self.active, tuple(prompts)))
        try:
            self.gate.wait(10)
            if self.fail_prompt in prompts:
                raise RuntimeError("boom")
            if self.oom_prompt in prompts or (self.max_images is not None and len(prompts) > self.max_images):
                raise OutOfMemory("out of memory")
            return [f"{p}:{s}:{self.active}" for p, s in zip(prompts, seeds)]
        finally:
            with self.lock:
                self.running -= 1


async def wait_for(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


@pytest.fixture
async def make_batcher():
    made: list[Batcher] = []

    def make(engine, **kw) -> Batcher:
        b = Batcher(engine, **kw)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        await b.stop()


async def test_compatible_jobs_waiting_for_the_device_share_one_call(make_batcher):
    engine = FakeEngine()
    engine.gate.clear()
    b = make_batcher(engine, gpu_slots=1, max_batch=4)
    first = asyncio.create_task(b.submit(params(), "p0", [0]))
    await wait_for(lambda: len(engine.calls) == 1)
    waiting = [asyncio.create_task(b.submit(params(), f"p{i}", [i])) for i in range(1, 4)]
    other_size = asyncio.create_task(b.submit(params(width=128), "big", [9]))
    fifth = asyncio.create_task(b.submit(params(), "p4", [4, 5]))  # 2 images: does not fit after p1..p3
    await wait_for(lambda: b.queued == 5)
    engine.gate.set()
    results = await asyncio.gather(first, *waiting, other_size, fifth)
    assert [c[0] for c in engine.calls] == [["p0"], ["p1", "p2", "p3"], ["big"], ["p4", "p4"]]
    assert results[1].images == ["p1:1:None"] and results[1].batch_images == 3 and results[1].batch_requests == 3
    assert results[0].batch_images == 1
    assert results[5].images == ["p4:4:None", "p4:5:None"]


async def test_batching_off_runs_each_request_alone(make_batcher):
    engine = FakeEngine()
    engine.gate.clear()
    b = make_batcher(engine, gpu_slots=1, max_batch=1)
    tasks = [asyncio.create_task(b.submit(params(), f"p{i}", [i])) for i in range(3)]
    await wait_for(lambda: len(engine.calls) == 1)
    engine.gate.set()
    await asyncio.gather(*tasks)
    assert [c[0] for c in engine.calls] == [["p0"], ["p1"], ["p2"]]


async def test_loras_switch_only_while_no_call_runs(make_batcher):
    engine = FakeEngine()
    engine.gate.clear()
    b = make_batcher(engine, gpu_slots=3, max_batch=1)
    order = [("a", 1.0), ("a", 1.0), ("b", 1.0), ("a", 1.0), (None, 1.0), ("a", 0.5), ("a", 0.5)]
    tasks = [asyncio.create_task(b.submit(params(name, w), f"p{i}", [i])) for i, (name, w) in enumerate(order)]
    # The two "a" jobs overlap on two slots; "b" must wait for both to finish.
    await wait_for(lambda: engine.running == 2)
    await asyncio.sleep(0.05)
    assert engine.running == 2 and len(engine.calls) == 2
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    for (name, w), res in zip(order, results):
        assert res.images[0].endswith(str((name, w) if name else None))
    switches = [e for e in engine.events if e[0] == "switch"]
    assert all(running == 0 for _, _, running in switches)
    assert [s[1] for s in switches] == [("a", 1.0), ("b", 1.0), ("a", 1.0), None, ("a", 0.5)]


async def test_a_lora_that_fails_to_load_fails_only_its_jobs(make_batcher):
    engine = FakeEngine()
    b = make_batcher(engine, gpu_slots=1, max_batch=4)
    with pytest.raises(InvalidInput):
        await b.submit(params("broken"), "x", [1])
    res = await b.submit(params("a"), "y", [2])
    assert res.images == ["y:2:('a', 1.0)"]


async def test_a_failed_call_fails_its_batch_and_the_next_still_runs(make_batcher):
    engine = FakeEngine()
    engine.fail_prompt = "bad"
    b = make_batcher(engine, gpu_slots=1, max_batch=4)
    with pytest.raises(RuntimeError):
        await b.submit(params(), "bad", [1])
    assert (await b.submit(params(), "good", [2])).images == ["good:2:None"]


async def test_a_batch_that_runs_out_of_memory_is_run_request_by_request(make_batcher):
    engine = FakeEngine()
    engine.gate.clear()
    engine.max_images, engine.oom_prompt = 2, "huge"
    b = make_batcher(engine, gpu_slots=1, max_batch=4)
    first = asyncio.create_task(b.submit(params(), "p0", [0]))
    await wait_for(lambda: len(engine.calls) == 1)
    batched = [asyncio.create_task(b.submit(params(), p, [i])) for i, p in enumerate(("a", "huge", "b"), 1)]
    await wait_for(lambda: b.queued == 3)
    engine.gate.set()
    await first
    a, huge, b_ = await asyncio.gather(*batched, return_exceptions=True)
    assert [c[0] for c in engine.calls] == [["p0"], ["a", "huge", "b"], ["a"], ["huge"], ["b"]]
    # Only the request that does not fit even alone fails; the others were not failed for the company.
    assert a.images == ["a:1:None"] and b_.images == ["b:3:None"] and a.batch_requests == 1
    assert isinstance(huge, OutOfMemory)


async def test_a_cancelled_request_is_not_generated(make_batcher):
    engine = FakeEngine()
    engine.gate.clear()
    b = make_batcher(engine, gpu_slots=1, max_batch=1)
    first = asyncio.create_task(b.submit(params(), "p0", [0]))
    await wait_for(lambda: len(engine.calls) == 1)
    gone = asyncio.create_task(b.submit(params(), "gone", [1]))
    kept = asyncio.create_task(b.submit(params(), "kept", [2]))
    await wait_for(lambda: b.queued == 2)
    gone.cancel()
    engine.gate.set()
    await asyncio.gather(first, kept)
    assert [c[0] for c in engine.calls] == [["p0"], ["kept"]]


@pytest.mark.parametrize(
    ("size", "expected"),
    [((64, 64), (64, 64)), ((70, 100), (64, 96)), ((72, 1000), (80, 1008)), ((1360, 768), (1360, 768)), ((2047, 65), (2048, 64))],
)
def test_round_size_to_nearest_multiple_of_16(size, expected):
    assert round_size(*size) == expected


def test_variant_is_read_from_the_transformer_config(tmp_path):
    for guidance, variant in ((True, "dev"), (False, "schnell")):
        d = tmp_path / variant / "transformer"
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"guidance_embeds": %s}' % str(guidance).lower())
        assert detect_variant(d.parent) == variant


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, (1024, 1024)),
        ({"aspect_ratio": "1:1"}, (1024, 1024)),
        ({"aspect_ratio": "16:9"}, (1360, 768)),
        ({"aspect_ratio": "9:16"}, (768, 1360)),
        ({"aspect_ratio": "16:9", "height": 500}, (1360, 500)),
        ({"width": 300}, (300, 1024)),
    ],
)
def test_presets_set_the_size_and_explicit_sides_win(fields, expected):
    assert ImageGenInput(prompt="x", **fields).requested_size() == expected


def test_download_takes_only_the_diffusers_parts():
    from huggingface_hub.utils import filter_repo_objects

    from model_servers.flux.download import DIFFUSERS_PARTS

    repo = [
        "flux1-schnell.safetensors", "ae.safetensors", "README.md", "schnell_grid.jpeg", "model_index.json",
        "scheduler/scheduler_config.json", "text_encoder/model.safetensors", "text_encoder_2/model-00001-of-00002.safetensors",
        "tokenizer/vocab.json", "tokenizer_2/spiece.model", "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    assert list(filter_repo_objects(repo, allow_patterns=DIFFUSERS_PARTS)) == repo[4:]
