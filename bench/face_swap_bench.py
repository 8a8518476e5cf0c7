"""Frames/s of the face-swap video path, with an identity swap, on a 10 s 720p30 clip with audio.

Measured in one run, side by side, on the same clip and the same encoder settings:
  (a) ffmpeg alone: decode -> raw bgr24 pipe -> encode (+ audio mux), two ffmpeg processes, no Python
  (b) the original serverless design: extract PNG files, read/write each PNG in Python, encode the
      PNGs, then mux the audio in a fourth pass
  ours: the server's pipeline (model_servers/face_swap/pipeline.py) with the engine replaced by an
      identity, so the figure is the I/O path's ceiling
Targets: ours >= 0.8x (a) and >= 5x (b).
  (b') only with --dlc: (b) with Deep-Live-Cam's own encoder arguments (libx264 preset medium, CRF 18,
      a bt709 colorspace filter): a DIFFERENT setting from ours, shown for reference only
With --engine lite it also reports the lite engine's real swap rate on the clip (a face is drawn in).
--inswapper times the InsightFace engine through the same pipeline on a clip with a face in it, at 720p:
  --inswapper DIR       real models laid out as the server expects (see model_servers/face_swap/README.md)
  --inswapper tiny      the tests' tiny ONNX models (real signatures, trivial compute): the pipeline's ceiling
  --inswapper standin   tiny detector/recognizer logic, plus a compute branch the size of SCRFD-10G in the
                        detector, and an inswapper_128 with the real layer sizes and RANDOM weights (fp16
                        and fp32): realistic cost, meaningless pixels
It prints the providers each ONNX Runtime session actually runs on (CUDA when onnxruntime-gpu finds a GPU).

    python bench/face_swap_bench.py [--seconds 10] [--repeat 1] [--quality 80] [--dlc] [--engine lite]
                                    [--inswapper DIR|tiny|standin ...] [--frame-workers 1,4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from model_servers.face_swap.media import crf_for, find_tools
from model_servers.face_swap.pipeline import Job
from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.workflows.face_swap import FaceSwapOptions

W, H, FPS = 1280, 720, 30
QUALITY = 80  # the workflow's default video_quality (--quality changes it for every path alike)


def make_clip(ffmpeg: str, out: Path, seconds: float, face: Path | None) -> None:
    """testsrc2 (moving, detailed) with a tone; optionally a real face photo overlaid in the middle."""
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate={FPS}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]  # fmt: skip
    if face is not None:
        cmd += ["-i", str(face), "-filter_complex", "[2:v]scale=400:-2[f];[0:v][f]overlay=(W-w)/2:(H-h)/2[v]", "-map", "[v]", "-map", "1:a"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)]
    subprocess.run(cmd, check=True)


def encoder_args(quality: int) -> list[str]:
    return ["-c:v", "libx264", "-crf", str(crf_for(quality)), "-preset", "veryfast", "-pix_fmt", "yuv420p"]


# Deep-Live-Cam's (roop's) create_video: libx264 at its default quality 18 as CRF, no preset (= medium), and
# roop's colour filter. (The variant "colorspace=bt709:iprimaries=bt709:itrc=bt709" fails on PNG input:
# "Unsupported input colorspace 2 (unknown)", so roop's "iall=bt601-6-625" form is the one that runs.)
DLC_ENCODER = ["-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", "-vf", "colorspace=bt709:iall=bt601-6-625:fast=1"]


def bench_ffmpeg_pipe(ffmpeg: str, clip: Path, out: Path, quality: int) -> None:
    dec = subprocess.Popen(
        [ffmpeg, "-v", "error", "-nostdin", "-i", str(clip), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"],
        stdout=subprocess.PIPE,
    )
    enc = subprocess.Popen(
        [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{W}x{H}", "-framerate", str(FPS),
         "-i", "pipe:0", "-i", str(clip), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "copy", "-shortest",
         *encoder_args(quality), "-movflags", "+faststart", str(out)],
        stdin=dec.stdout,
    )  # fmt: skip
    assert dec.stdout is not None
    dec.stdout.close()
    enc.wait()
    dec.wait()
    if enc.returncode or dec.returncode:
        raise RuntimeError("ffmpeg pipe failed")


def bench_png_design(ffmpeg: str, clip: Path, out: Path, work: Path, quality: int, encoder: list[str] | None = None) -> None:
    frames = work / "frames"
    frames.mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-i", str(clip), "-pix_fmt", "rgb24", str(frames / "%04d.png")], check=True)
    for path in sorted(frames.glob("*.png")):  # the original processes frame files one by one, in place
        frame = cv2.imread(str(path))
        cv2.imwrite(str(path), frame)
    temp = work / "temp.mp4"
    enc = encoder if encoder is not None else encoder_args(quality)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-r", str(FPS), "-i", str(frames / "%04d.png"), *enc, str(temp)], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(temp), "-i", str(clip), "-c:v", "copy", "-map", "0:v:0",
                    "-map", "1:a:0", "-c:a", "copy", "-shortest", str(out)], check=True)  # fmt: skip


class Identity:
    enhanced = False

    def swap(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        return frame, 0


class _NoEngine:
    name, device = "identity", "cpu"


def bench_ours(settings: FaceSwapSettings, clip: Path, source: Path, work: Path, quality: int, engine=None, model=None) -> dict:
    job = Job(
        engine=engine or _NoEngine(),
        tools=find_tools(settings.ffmpeg),
        settings=settings,
        source=source,
        target=clip,
        options=FaceSwapOptions(keep_fps=True, keep_audio=True, video_quality=quality, model=model),
        workdir=work,
        swapper_factory=None if engine else (lambda img, opts, video: Identity()),
    )
    return job.run().metadata


def tiny_models(models_dir: Path) -> Path:
    """The tests' tiny ONNX models (tests/face_swap/face_swap_tiny.py), laid out as the server expects."""
    path = Path(__file__).resolve().parents[1] / "tests" / "face_swap" / "face_swap_tiny.py"
    spec = importlib.util.spec_from_file_location("face_swap_tiny", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.install(models_dir, with_enhancer=False)


def _conv(nodes, inits, x, name, cin, cout, k, stride=1, pad=None, rng=None, dtype=np.float32):
    """Conv with He-initialised random weights; ``pad="reflect"`` pads with a Pad node first, like inswapper."""
    from onnx import helper, numpy_helper

    w = rng.normal(0.0, np.sqrt(2.0 / (cin * k * k)), size=(cout, cin, k, k)).astype(dtype)
    b = np.zeros(cout, dtype)
    inits += [numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")]
    if pad == "reflect":
        p = k // 2
        inits.append(numpy_helper.from_array(np.array([0, 0, p, p, 0, 0, p, p], np.int64), name + "_pads"))
        nodes.append(helper.make_node("Pad", [x, name + "_pads"], [name + "_padded"], mode="reflect"))
        x, pads = name + "_padded", [0, 0, 0, 0]
    else:
        pads = [k // 2] * 4
    nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], kernel_shape=[k, k], strides=[stride, stride], pads=pads))
    return name


def standin_swapper(path: Path, *, fp16: bool, seed: int = 3) -> Path:
    """inswapper_128's layer sizes (about 138 M parameters: 554 MB fp32, 277 MB fp16) with random weights.

    Encoder 3->128 (7x7) ->256 ->512 (s2) ->1024 (s2) to 32x32; six style blocks of two 1024x1024 3x3
    convs, each followed by AdaIN (instance norm, scale and shift from a 512->2048 linear of the source
    latent); decoder with two bilinear 2x upsamplings back to 128x128, 7x7 to RGB, tanh. fp16 keeps
    float32 inputs and outputs (cast inside), as the published inswapper_128_fp16 does. ``emap`` last.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dt = np.float16 if fp16 else np.float32
    nodes, inits = [], []
    x, src = "target", "source"
    if fp16:
        nodes += [helper.make_node("Cast", ["target"], ["target16"], to=TensorProto.FLOAT16),
                  helper.make_node("Cast", ["source"], ["source16"], to=TensorProto.FLOAT16)]  # fmt: skip
        x, src = "target16", "source16"

    def act(x, name, kind="LeakyRelu"):
        nodes.append(helper.make_node(kind, [x], [name], **({"alpha": 0.2} if kind == "LeakyRelu" else {})))
        return name

    x = act(_conv(nodes, inits, x, "enc0", 3, 128, 7, pad="reflect", rng=rng, dtype=dt), "enc0_a")
    x = act(_conv(nodes, inits, x, "enc1", 128, 256, 3, rng=rng, dtype=dt), "enc1_a")
    x = act(_conv(nodes, inits, x, "enc2", 256, 512, 3, 2, rng=rng, dtype=dt), "enc2_a")
    x = act(_conv(nodes, inits, x, "enc3", 512, 1024, 3, 2, rng=rng, dtype=dt), "enc3_a")
    inits += [numpy_helper.from_array(np.ones(1024, dt), "in_scale"), numpy_helper.from_array(np.zeros(1024, dt), "in_bias"),
              numpy_helper.from_array(np.array([1, 2048, 1, 1], np.int64), "style_shape")]  # fmt: skip
    for blk in range(6):
        skip = x
        for j in range(2):
            n = f"b{blk}c{j}"
            h = _conv(nodes, inits, x, n, 1024, 1024, 3, pad="reflect", rng=rng, dtype=dt)
            nodes.append(helper.make_node("InstanceNormalization", [h, "in_scale", "in_bias"], [n + "_in"], epsilon=1e-6))
            sw = rng.normal(0.0, 0.01, size=(512, 2048)).astype(dt)
            sb = np.concatenate([np.ones(1024), np.zeros(1024)]).astype(dt)  # gamma ~ 1, beta ~ 0
            inits += [numpy_helper.from_array(sw, n + "_sw"), numpy_helper.from_array(sb, n + "_sb")]
            nodes += [
                helper.make_node("Gemm", [src, n + "_sw", n + "_sb"], [n + "_style"]),
                helper.make_node("Reshape", [n + "_style", "style_shape"], [n + "_s4"]),
                helper.make_node("Split", [n + "_s4"], [n + "_gamma", n + "_beta"], axis=1),
                helper.make_node("Mul", [n + "_in", n + "_gamma"], [n + "_m"]),
                helper.make_node("Add", [n + "_m", n + "_beta"], [n + "_ada"]),
            ]
            x = act(n + "_ada", n + "_r", "Relu") if j == 0 else n + "_ada"
        nodes.append(helper.make_node("Add", [x, skip], [f"b{blk}_out"]))
        x = f"b{blk}_out"
    inits += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales")]
    for i, (cin, cout) in enumerate([(1024, 512), (512, 256)]):
        nodes.append(helper.make_node("Resize", [x, "", "up_scales"], [f"up{i}"], mode="linear"))
        x = act(_conv(nodes, inits, f"up{i}", f"dec{i}", cin, cout, 3, rng=rng, dtype=dt), f"dec{i}_a")
    x = act(_conv(nodes, inits, x, "dec2", 256, 128, 3, rng=rng, dtype=dt), "dec2_a")
    x = act(_conv(nodes, inits, x, "dec3", 128, 3, 7, pad="reflect", rng=rng, dtype=dt), "dec3_t", "Tanh")
    inits += [numpy_helper.from_array(np.array(0.5, dt), "half")]
    nodes += [helper.make_node("Mul", [x, "half"], ["scaled"]), helper.make_node("Add", ["scaled", "half"], ["out16" if fp16 else "output"])]
    if fp16:
        nodes.append(helper.make_node("Cast", ["out16"], ["output"], to=TensorProto.FLOAT))
    inits.append(numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap"))  # last: INSwapper reads it by position
    ins = [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
           helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])]  # fmt: skip
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])
    model = helper.make_model(helper.make_graph(nodes, "standin_inswapper", ins, [out], inits),
                              opset_imports=[helper.make_opsetid("", 13)], producer_name="taskfleet-bench")  # fmt: skip
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def add_detector_cost(path: Path, seed: int = 4) -> Path:
    """Adds to the tiny detector a conv stack of about 10 G multiply-adds at 640x640 (SCRFD-10G's size)
    whose result is multiplied by zero into the stride-32 scores: real detector cost, tiny-model answers."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.load(str(path))
    g = model.graph
    nodes, inits = [], []
    x, cin = "input.1", 3
    plan = [(32, 2), (64, 2), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1), (256, 1), (512, 2), (512, 1)]
    for i, (cout, stride) in enumerate(plan):
        c = _conv(nodes, inits, x, f"cost{i}", cin, cout, 3, stride, rng=rng)
        nodes.append(helper.make_node("Relu", [c], [f"cost{i}_r"]))
        x, cin = f"cost{i}_r", cout
    inits.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "cost_zero"))
    nodes += [helper.make_node("ReduceMean", [x], ["cost_mean"], keepdims=0),
              helper.make_node("Mul", ["cost_mean", "cost_zero"], ["cost_nil"])]  # fmt: skip
    # Route score_32 through the branch: rename its producer's output, then add the zero.
    for node in g.node:
        node.output[:] = ["score_32_raw" if o == "score_32" else o for o in node.output]
    nodes.append(helper.make_node("Add", ["score_32_raw", "cost_nil"], ["score_32"]))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    onnx.save(model, str(path))
    return path


def standin_models(models_dir: Path) -> Path:
    tiny_models(models_dir)
    add_detector_cost(models_dir / "models" / "buffalo_l" / "det_10g.onnx")
    standin_swapper(models_dir / "inswapper_128_fp16.onnx", fp16=True)
    standin_swapper(models_dir / "inswapper_128.onnx", fp16=False)
    return models_dir


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none (no nvidia-smi)"


def describe_sessions(eng) -> str:
    """The providers each ONNX Runtime session of the engine really runs on (not just the ones asked for)."""
    parts = [f"detector {eng.analysis.det_model.session.get_providers()[0]}"]
    parts += [f"{name} {sw.session.get_providers()[0]}" for name, sw in sorted(eng.swappers.items())]
    return ", ".join(parts)


def micro_timings(eng, frame: np.ndarray, latent_src: np.ndarray, n: int = 50) -> str:
    """Milliseconds per call of the detector on one 720p frame and of each swapper on one 128x128 crop."""
    det = eng.analysis.det_model
    for _ in range(3):
        det.detect(frame, max_num=0)
    start = time.perf_counter()
    for _ in range(n):
        det.detect(frame, max_num=0)
    parts = [f"detect {1000 * (time.perf_counter() - start) / n:.2f} ms"]
    crop = np.ascontiguousarray(frame[:128, :128])
    for name, sw in sorted(eng.swappers.items()):
        latent = sw.latent(latent_src)
        for _ in range(3):
            sw.run(crop, latent)
        start = time.perf_counter()
        for _ in range(n):
            sw.run(crop, latent)
        parts.append(f"{name} {1000 * (time.perf_counter() - start) / n:.2f} ms")
    return ", ".join(parts)


def count_frames(clip: Path) -> int:
    cap = cv2.VideoCapture(str(clip))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each path; medians are printed")
    parser.add_argument("--quality", type=int, default=QUALITY, help="video_quality 0-100 (CRF = 51 - 0.51 q)")
    parser.add_argument("--dlc", action="store_true", help="also (b'): (b) with Deep-Live-Cam's own encoder arguments")
    parser.add_argument("--no-compare", action="store_true", help="skip (a), (b) and the identity run")
    parser.add_argument("--engine", choices=["lite"], help="also time a real swap with this engine")
    parser.add_argument("--inswapper", metavar="DIR|tiny|standin", action="append", default=[],
                        help="also time the insightface engine with these models (repeatable)")  # fmt: skip
    parser.add_argument("--frame-workers", default="", help="comma-separated frame_workers values for the engines (default: settings)")
    args = parser.parse_args()

    settings = FaceSwapSettings(batch_frames=8, progress_every_frames=10_000)
    tools = find_tools(settings.ffmpeg)
    root = Path(tempfile.mkdtemp(prefix="fsbench-"))
    try:
        from skimage import data

        source = root / "source.png"
        cv2.imwrite(str(source), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        clip = root / "clip.mp4"
        make_clip(tools.ffmpeg, clip, args.seconds, face=None)
        frames = count_frames(clip)
        print(f"clip: {W}x{H} {FPS} fps, {args.seconds:g} s, {frames} frames, aac audio; encoder libx264 veryfast crf {crf_for(args.quality)}")
        print(f"ffmpeg: {tools.ffmpeg}; cores: {os.cpu_count()}; repeat: {args.repeat} (medians)")
        paths = [] if args.no_compare else ["a", "b", *(["b2"] if args.dlc else []), "ours"]
        runs: dict[str, list[float]] = {k: [] for k in paths}
        for i in range(args.repeat if paths else 0):
            # Interleaved so that a machine's drift hits every path alike.
            w = root / f"run{i}"
            w.mkdir()
            runs["a"].append(timed(bench_ffmpeg_pipe, tools.ffmpeg, clip, w / "a.mp4", args.quality))
            (w / "b").mkdir()
            runs["b"].append(timed(bench_png_design, tools.ffmpeg, clip, w / "b.mp4", w / "b", args.quality))
            if args.dlc:
                (w / "b2").mkdir()
                runs["b2"].append(timed(bench_png_design, tools.ffmpeg, clip, w / "b2.mp4", w / "b2", args.quality, DLC_ENCODER))
            (w / "ours").mkdir()
            start = time.perf_counter()
            meta = bench_ours(settings, clip, source, w / "ours", args.quality)
            runs["ours"].append(time.perf_counter() - start)
            assert meta["frames_processed"] == frames, meta
            shutil.rmtree(w)
        if paths:
            fps = {k: frames / statistics.median(v) for k, v in runs.items()}
            print(f"(a) ffmpeg decode -> pipe -> encode : {fps['a']:7.1f} frames/s")
            print(f"(b) PNG extraction (original design): {fps['b']:7.1f} frames/s")
            if args.dlc:
                print(f"(b') PNG, Deep-Live-Cam's encoder   : {fps['b2']:7.1f} frames/s  (DIFFERENT setting: preset medium, crf 18, bt709 colorspace filter)")
            print(f"ours, identity swap                 : {fps['ours']:7.1f} frames/s")
            print(f"ours / (a) = {fps['ours'] / fps['a']:.2f} (target >= 0.8)   ours / (b) = {fps['ours'] / fps['b']:.2f} (target >= 5)")
            if args.dlc:
                print(f"ours / (b') = {fps['ours'] / fps['b2']:.2f} (not like for like: (b') encodes slower and better)")

        engines = []
        if args.engine == "lite":
            from model_servers.face_swap.lite_engine import LiteEngine

            engines.append((LiteEngine(settings), settings, "lite"))
        if args.inswapper:
            import onnxruntime as ort

            from model_servers.face_swap.insightface_engine import InsightFaceEngine

            print(f"GPU: {gpu_name()}; onnxruntime {ort.__version__}, providers available: {ort.get_available_providers()}; "
                  f"asked for: {settings.provider_list()}")  # fmt: skip
        for which in args.inswapper:
            if which in ("tiny", "standin"):
                models = root / f"models-{which}"
                start = time.perf_counter()
                (tiny_models if which == "tiny" else standin_models)(models)
                label = {"tiny": "tiny models (tests/face_swap/face_swap_tiny.py: real signatures, trivial compute)",
                         "standin": "stand-in models (tiny detector + SCRFD-10G-sized compute branch; inswapper_128 layer sizes, random weights)"}[which]  # fmt: skip
                print(f"{which}: {label}; built in {time.perf_counter() - start:.1f} s")
            else:
                models = Path(which)
                print(f"{which}: models from {models}")
            s = settings.model_copy(update={"models_dir": str(models)})
            engines.append((InsightFaceEngine(s), s, which))
        if engines:
            import matplotlib.cbook as cbook

            face = root / "hopper.jpg"
            with cbook.get_sample_data("grace_hopper.jpg") as fh:
                face.write_bytes(fh.read())
            faced = root / "faced.mp4"
            make_clip(tools.ffmpeg, faced, args.seconds, face=face)  # the clip with a real face in it
            cap = cv2.VideoCapture(str(faced))
            ok, first = cap.read()
            cap.release()
            assert ok
            source_img = cv2.imread(str(source))
        workers_list = [int(w) for w in args.frame_workers.split(",") if w.strip()] or [settings.frame_workers]
        for eng, s, which in engines:
            print(f"[{which}] {eng.load()}")
            models_to_time = [None]
            if eng.name == "insightface":
                print(f"[{which}] sessions run on: {describe_sessions(eng)}")
                face = eng.analysis.get(source_img)[0]
                print(f"[{which}] per call: {micro_timings(eng, first.copy(), face.normed_embedding)}")
                models_to_time = sorted(eng.swappers)
            for model in models_to_time:
                for workers in workers_list if eng.name == "insightface" else [1]:
                    sw_settings = s.model_copy(update={"frame_workers": workers})
                    eng.settings = sw_settings
                    opts = FaceSwapOptions(keep_fps=True, keep_audio=True, video_quality=args.quality, model=model)
                    warm = eng.start(source_img, opts, video=True)
                    for _ in range(3):  # first runs pick kernels (cuDNN); not part of the steady rate
                        warm.swap(first.copy())
                    rates, faces = [], 0
                    for i in range(args.repeat):
                        work = root / f"{eng.name}-{model}-{workers}-{i}"
                        work.mkdir()
                        start = time.perf_counter()
                        meta = bench_ours(sw_settings, faced, source, work, args.quality, engine=eng, model=model)
                        rates.append(meta["frames_processed"] / (time.perf_counter() - start))
                        faces = meta["faces_detected"]
                        shutil.rmtree(work)
                    rate = statistics.median(rates)
                    print(f"[{which}] {eng.name} engine ({eng.device}), {model or 'default'}, frame_workers {workers}, real swap, 720p, "
                          f"whole pipeline: {rate:7.1f} frames/s (runs: {', '.join(f'{r:.1f}' for r in rates)}; faces per frame: {faces})")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
