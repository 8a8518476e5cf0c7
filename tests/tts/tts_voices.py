"""A tiny piper-format voice built with the onnx helper API: the real loading and synthesis path, no download.

The model has piper's VITS signature (``input`` [1,N] int64, ``input_lengths`` [1], ``scales`` [3]
-> [1,1,T] float). It "speaks" a tone whose length is ``SAMPLES_PER_ID * N * length_scale`` and
whose pitch follows the phoneme ids, so duration tracks the text and the speed like a real voice.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

SAMPLES_PER_ID = 800  # 50 ms of audio per phoneme id at 16 kHz
SAMPLE_RATE = 16000


def _model() -> onnx.ModelProto:
    def const(name: str, value: float | int, dtype=TensorProto.FLOAT) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [], [value]))

    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        const("one_i", 1, TensorProto.INT64),
        helper.make_node("Gather", ["shape", "one_i"], ["n"], axis=0),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["scales", "one_i"], ["length_scale"], axis=0),
        const("per_id", float(SAMPLES_PER_ID)),
        helper.make_node("Mul", ["n_f", "per_id"], ["t0"]),
        helper.make_node("Mul", ["t0", "length_scale"], ["t_len"]),
        helper.make_node("Floor", ["t_len"], ["t_len_floor"]),
        const("zero_f", 0.0),
        const("one_f", 1.0),
        helper.make_node("Range", ["zero_f", "t_len_floor", "one_f"], ["t"]),
        # pitch 120 Hz + 2 Hz per mean phoneme id: different text, different sound
        helper.make_node("Cast", ["input"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["ids_f"], ["mean_id"], keepdims=0),
        const("two", 2.0),
        const("base_hz", 120.0),
        helper.make_node("Mul", ["mean_id", "two"], ["id_hz"]),
        helper.make_node("Add", ["id_hz", "base_hz"], ["hz"]),
        const("w", 2 * 3.141592653589793 / SAMPLE_RATE),
        helper.make_node("Mul", ["hz", "w"], ["rad_per_sample"]),
        helper.make_node("Mul", ["t", "rad_per_sample"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        const("amp", 0.25),
        helper.make_node("Mul", ["wave", "amp"], ["audio_1d"]),
        helper.make_node(
            "Constant", [], ["out_shape"], value=helper.make_tensor("out_shape", TensorProto.INT64, [3], [1, 1, -1])
        ),
        helper.make_node("Reshape", ["audio_1d", "out_shape"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_piper_voice",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_voice(
    voices_dir: Path, name: str = "en_US-tiny-low", language: str = "en_US", espeak_voice: str = "en-us"
) -> Path:
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    voices_dir.mkdir(parents=True, exist_ok=True)
    model_path = voices_dir / f"{name}.onnx"
    onnx.save(_model(), model_path)
    config = {
        "audio": {"sample_rate": SAMPLE_RATE, "quality": "low"},
        "espeak": {"voice": espeak_voice},
        "language": {"code": language},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "num_symbols": max(i for ids in DEFAULT_PHONEME_ID_MAP.values() for i in ids) + 1,
        "num_speakers": 1,
        "speaker_id_map": {},
        "piper_version": "1.0.0",
    }
    Path(f"{model_path}.json").write_text(json.dumps(config), encoding="utf-8")
    return model_path
