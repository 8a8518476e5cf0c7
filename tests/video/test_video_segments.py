"""The video_segments plan: segments tile the speech, long sentences span several images, stock
placement repeats for a seed, and each image request carries the prompt and image options."""

from __future__ import annotations

import pytest

from consumer.processors.video_segments import choose_stock, image_size, plan, split_spans
from taskfleet.workflows import WorkflowRegistry
from taskfleet.workflows.image_gen import IMAGE_GEN
from taskfleet.workflows.tts import SentenceTiming
from taskfleet.workflows.video import VideoOptions

SENTENCES = [
    SentenceTiming(index=0, text="Short one.", start_s=0.1, end_s=1.9),
    SentenceTiming(index=1, text="A very long sentence that goes on.", start_s=2.0, end_s=14.5),
    SentenceTiming(index=2, text="The end.", start_s=14.6, end_s=16.0),
]


def test_segments_tile_the_speech_and_a_long_sentence_spans_several():
    spans = split_spans(SENTENCES, 16.2, max_segment_s=6.0)
    assert [t for _, _, t in spans] == ["Short one."] + ["A very long sentence that goes on."] * 3 + ["The end."]
    assert spans[0][0] == 0.0 and spans[-1][1] == 16.2
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        assert end == start  # no gaps, no overlaps
    assert all(end - start <= 6.0 for start, end, _ in spans)


def test_the_same_seed_places_the_same_stock_and_another_seed_may_not():
    clips = ["s3://b/a.mp4", "s3://b/b.mp4"]
    first = choose_stock(10, clips, 0.3, seed=7)
    assert first == choose_stock(10, clips, 0.3, seed=7)
    assert len(first) == 3 and set(first.values()) <= set(clips)
    assert any(choose_stock(10, clips, 0.3, seed=s) != first for s in range(8, 20))
    assert choose_stock(3, clips, 0.5, seed=1).__len__() == 2  # half of 3, rounded up
    assert choose_stock(10, [], 1.0, seed=1) == {} and choose_stock(10, clips, 0.0, seed=1) == {}


def test_image_requests_fill_the_template_and_pass_the_image_options():
    options = VideoOptions(
        script="x", prompt_template="watercolor of {sentence}, soft light", size="128x72", stock_ratio=0.5,
        stock_clips=["s3://b/a.mp4"], seed=11, image={"steps": 2, "guidance_scale": 1.5, "lora": "style_a", "lora_weight": 0.5},
    )  # fmt: skip
    out = plan(SENTENCES, 16.2, options)
    generated = [s for s in out.segments if s.source == "generated"]
    # 5 segments, half of them (2.5, rounded half up) stock.
    assert len(out.images) == len(generated) == 2 and sum(s.source == "stock" for s in out.segments) == 3
    for seg, request in zip(generated, out.images):
        assert request["prompt"] == f"watercolor of {seg.text}, soft light"
        assert request["seed"] == 11 + seg.index
        assert (request["num_inference_steps"], request["guidance_scale"], request["lora_name"], request["lora_weight"]) == (2, 1.5, "style_a", 0.5)
        IMAGE_GEN.validate_input(request)  # what the pipeline's image stage will check
    assert (out.settings.width, out.settings.height) == (128, 72) and out.seed == 11
    assert plan(SENTENCES, 16.2, options) == out


def test_a_script_with_braces_is_not_read_as_a_template():
    options = VideoOptions(script="x", prompt_template="{sentence} {0} {other}", size="64x64", seed=1)
    sentences = [SentenceTiming(index=0, text="Use {braces}.", start_s=0, end_s=1)]
    assert plan(sentences, 1.0, options).images[0]["prompt"] == "Use {braces}. {0} {other}"


@pytest.mark.parametrize("size, expected", [((1360, 768), (1360, 768)), ((128, 72), (128, 80)), ((32, 32), (64, 64)), ((4096, 2160), (2048, 1088))])
def test_images_are_asked_in_a_size_flux_takes_with_the_videos_aspect(size, expected):
    assert image_size(*size) == expected


def test_both_workflows_are_installed_with_their_processors():
    from consumer.registry import resolve

    runnable = resolve(["video_segments", "video_compose"], workflows=WorkflowRegistry.from_entry_points())
    assert set(runnable) == {"video_segments", "video_compose"}
    assert all(r.model_servers == () for r in runnable.values())  # no model server: any consumer runs them
