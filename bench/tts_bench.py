"""Real-time factor of each TTS engine on CPU for a 1,000-character text.

RTF = wall time to synthesize / duration of the audio produced (below 1 is faster than real time).
Timed through ``synthesize_to_file``, the server's whole pipeline: sentence split, synthesis,
trimming, loudness, WAV writing (and the mp3 encode, timed separately).

espeak-ng is the real thing. No piper voice can be downloaded here, so the piper figure uses a
stand-in with the architecture and size of a real "medium" piper voice: piper's own VITS
generator (``piper.train.vits.models.SynthesizerTrn``, medium hyper-parameters, ~15 M weights)
with random weights, exported to ONNX the way ``piper.train.export_onnx`` does and loaded through
the same ``PiperVoice.load`` path. The cost of VITS inference does not depend on the weights' values,
except for the durations the duration predictor chooses; random weights would pick about one
frame per phoneme id, so the predictor is replaced by a fixed 3 frames (35 ms) per id; piper puts a
pad id after every phoneme, so that is ~70 ms per phoneme, about 14 characters a second, the pace
of real piper voices. Needs torch (the flux extra) for the export.

    .venv/bin/python bench/tts_bench.py [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

TEXT = (
    "The harbour was quiet when the first boats came back. Fishermen tied their lines, counted the "
    "catch, and talked about the weather, which had turned colder than anyone expected. On the hill "
    "above the town, the old lighthouse keeper watched the clouds gather over the water. He had seen "
    "storms like this before, and he knew that the night would be long. Down in the market, traders "
    "packed away fruit and bread, while children ran between the stalls, laughing at the wind that "
    "pulled at their coats. A bell rang in the square. Someone shouted that the ferry would not sail "
    "again until morning! Travellers sighed, found rooms at the inn, and ordered soup by the fire. "
    "Why hurry, the innkeeper asked, when the sea decides for all of us? By midnight the rain was "
    "heavy, the streets were empty, and only the lamp in the lighthouse still turned, patient and "
    "steady, sweeping its beam across the dark waves until the grey light of dawn finally returned. "
    "Then the whole town woke up and the boats sailed again."
)
assert len(TEXT) == 1000, len(TEXT)


FRAMES_PER_ID = 3.0


def build_medium_piper_standin(voices_dir: Path, name: str = "en_US-standin-medium") -> Path:
    import torch
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP
    from piper.train.vits.models import SynthesizerTrn

    torch.manual_seed(0)
    num_symbols = 256
    model = SynthesizerTrn(
        n_vocab=num_symbols, spec_channels=513, segment_size=32, inter_channels=192, hidden_channels=192,
        filter_channels=768, n_heads=2, n_layers=6, kernel_size=3, p_dropout=0.1, resblock="2",
        resblock_kernel_sizes=(3, 5, 7), resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
        upsample_rates=(8, 8, 4), upsample_initial_channel=256, upsample_kernel_sizes=(16, 16, 8),
        n_speakers=1, gin_channels=0, use_sdp=True,
    )
    model.eval()
    with torch.no_grad():
        model.dec.remove_weight_norm()

    class FixedDurations(torch.nn.Module):
        def forward(self, x, x_mask, g=None, reverse=False, noise_scale=1.0):
            return torch.full_like(x_mask, math.log(FRAMES_PER_ID)) * x_mask

    model.dp = FixedDurations()

    def infer_forward(text, text_lengths, scales):
        return model.infer(
            text, text_lengths, noise_scale=scales[0], length_scale=scales[1], noise_scale_w=scales[2]
        )[0].unsqueeze(1)

    model.forward = infer_forward
    voices_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = voices_dir / f"{name}.onnx"
    dummy = (torch.randint(0, num_symbols, (1, 50)), torch.LongTensor([50]), torch.FloatTensor([0.667, 1.0, 0.8]))
    torch.onnx.export(
        model, dummy, str(onnx_path), opset_version=15, dynamo=False,
        input_names=["input", "input_lengths", "scales"], output_names=["output"],
        dynamic_axes={"input": {0: "batch_size", 1: "phonemes"}, "input_lengths": {0: "batch_size"},
                      "output": {0: "batch_size", 2: "time"}},
    )
    config = {
        "audio": {"sample_rate": 22050, "quality": "medium"}, "espeak": {"voice": "en-us"},
        "language": {"code": "en_US"}, "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak", "phoneme_id_map": DEFAULT_PHONEME_ID_MAP, "num_symbols": num_symbols,
        "num_speakers": 1, "speaker_id_map": {},
    }
    Path(f"{onnx_path}.json").write_text(json.dumps(config))
    print(f"piper stand-in: {onnx_path.stat().st_size / 1e6:.0f} MB ONNX (real medium voices: ~60 MB)")
    return onnx_path


def bench_engine(label: str, settings, runs: int, fmt: str = "wav") -> None:
    from model_servers.tts.audio import find_ffmpeg
    from model_servers.tts.engine_factory import open_engine
    from model_servers.tts.synthesis import synthesize_to_file

    engine = open_engine(settings)
    t0 = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - t0
    voice = engine.resolve_voice(None, None)
    ffmpeg = find_ffmpeg()
    times, duration, sentences = [], 0.0, 0
    for _ in range(runs + 1):  # the first run warms caches and is not counted
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            result = synthesize_to_file(
                engine, settings, text=TEXT, voice=voice, speed=1.0, fmt=fmt, workdir=Path(work), ffmpeg=ffmpeg
            )
            times.append(time.perf_counter() - t0)
            duration, sentences = result.duration_s, len(result.sentences)
    wall = statistics.median(times[1:])
    print(
        f"{label:<28} load {load_s:6.2f} s | {len(TEXT)} chars, {sentences} sentences -> {duration:6.2f} s audio | "
        f"synth {wall:6.3f} s (median of {runs}; cold {times[0]:.3f} s) | RTF {wall / duration:.4f} | "
        f"{len(TEXT) / wall:,.0f} chars/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--skip-piper", action="store_true")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from model_servers.tts.settings import TtsSettings

    print(f"CPU cores: {os.cpu_count()}  text: {len(TEXT)} characters")
    bench_engine("espeak-ng (wav)", TtsSettings(tts_engine="espeak"), args.runs)
    bench_engine("espeak-ng (mp3)", TtsSettings(tts_engine="espeak"), args.runs, fmt="mp3")
    if not args.skip_piper:
        with tempfile.TemporaryDirectory() as voices:
            build_medium_piper_standin(Path(voices))
            settings = TtsSettings(tts_engine="piper", voices_dir=voices, providers="CPUExecutionProvider")
            bench_engine("piper medium stand-in (wav)", settings, args.runs)


if __name__ == "__main__":
    main()
