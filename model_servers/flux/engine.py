"""The diffusers FluxPipeline behind the server: loading, per-variant defaults, LoRAs, one batched call.

Every method here blocks and must run on a worker thread. The engine holds one base model and any
number of loaded LoRA adapters; ``use_lora`` switches which one is active without reloading the
base weights. The engine itself does not guard against concurrent switching: the batcher only
switches while no pipeline call is running (see batcher.py).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from taskfleet.errors import InvalidInput, TaskfleetError

from model_servers.base import is_out_of_memory, out_of_memory
from model_servers.flux.settings import FluxSettings

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("model_servers.flux")

# Flux's VAE downsamples by 8 and the transformer packs latents in 2x2 patches: sides must be
# multiples of 16. The pipeline itself would silently round down; the server rounds to the nearest
# multiple and says so.
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class VariantDefaults:
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int


# schnell is timestep-distilled (4 steps, guidance ignored, trained on 256 T5 tokens);
# dev is guidance-distilled (about 28 steps at guidance 3.5, 512 tokens).
DEFAULTS = {
    "schnell": VariantDefaults(num_inference_steps=4, guidance_scale=0.0, max_sequence_length=256),
    "dev": VariantDefaults(num_inference_steps=28, guidance_scale=3.5, max_sequence_length=512),
}


def round_size(width: int, height: int) -> tuple[int, int]:
    def r(v: int) -> int:  # nearest multiple, halves up
        return max(SIZE_MULTIPLE, (v + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    return r(width), r(height)


def detect_variant(model_dir: Path) -> str:
    """schnell has no guidance embedding in its transformer; dev (and its fine-tunes) has one."""
    try:
        config = json.loads((model_dir / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return "schnell" if "schnell" in model_dir.name.lower() else "dev"
    return "dev" if config.get("guidance_embeds", False) else "schnell"


def check_model_dir(model_dir: Path) -> None:
    """Refuse early, with a reason an operator can act on, instead of a diffusers traceback."""
    if not model_dir.exists():
        raise FileNotFoundError(f"Flux model folder {model_dir} does not exist (set TASKFLEET_FLUX_MODEL)")
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a diffusers folder: model_index.json is missing")


def find_lora_file(lora_dir: Path, name: str) -> Path:
    """NAME.safetensors, or a folder NAME/ with exactly one .safetensors in it."""
    candidate = lora_dir / f"{name}.safetensors"
    if candidate.is_file():
        return candidate
    folder = lora_dir / name
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        if len(files) == 1:
            return files[0]
        preferred = folder / "pytorch_lora_weights.safetensors"
        if preferred.is_file():
            return preferred
    raise InvalidInput(f"no LoRA named {name!r} in the LoRA directory", code="lora_not_found")


def list_loras(lora_dir: Path) -> list[str]:
    if not lora_dir.is_dir():
        return []
    names = {p.stem for p in lora_dir.glob("*.safetensors")}
    names |= {p.name for p in lora_dir.iterdir() if p.is_dir() and any(p.glob("*.safetensors"))}
    return sorted(names)


_UNKNOWN = object()


class FluxEngine:
    def __init__(self, settings: FluxSettings) -> None:
        self.settings = settings
        self.model_dir = settings.model_path()
        self.lora_dir = settings.lora_path()
        self.variant = "dev"
        self.defaults = DEFAULTS["dev"]
        self.device = "cpu"
        self.pipe = None
        self._loaded_loras: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._active: object = None  # (name, weight), None for the base model, or _UNKNOWN
        # Only the batcher calls use_lora, between runs; the lock makes a misuse fail safe, not racy.
        self._lora_lock = threading.Lock()
        # One pipeline call runs at a time. The view below gives each call its own scheduler,
        # but the shared components are not thread-safe either (a fast tokenizer re-sets its
        # truncation/padding state on every call; an overlapping call on the second slot was
        # seen to change the first one's image). Throughput comes from batching requests into
        # one call, which the GPU runs far better than two interleaved calls anyway.
        self._call_lock = threading.Lock()

    def load(self) -> str:
        """Load the base model; returns a line for /health. Raises with the reason on failure."""
        check_model_dir(self.model_dir)
        import torch
        from diffusers import FluxPipeline

        s = self.settings
        self.variant = detect_variant(self.model_dir) if s.flux_variant == "auto" else s.flux_variant
        self.defaults = DEFAULTS[self.variant]
        device = s.flux_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not device.startswith("cuda") and s.flux_cpu_threads:
            torch.set_num_threads(s.flux_cpu_threads)
        dtype_name = s.flux_dtype
        if dtype_name == "auto":
            # bf16 is what FLUX.1 was trained in; on CPU it is slow and partly unsupported.
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = getattr(torch, dtype_name)
        with warnings.catch_warnings():
            # diffusers 0.42 renamed torch_dtype to dtype; the old name works from 0.32 (our floor) on.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = FluxPipeline.from_pretrained(str(self.model_dir), torch_dtype=dtype, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        if s.flux_cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif s.flux_cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
        if s.flux_vae_tiling:
            pipe.vae.enable_tiling()
        if s.flux_compile:
            # Compiled once per shape; a LoRA switch triggers a recompile of the touched graphs.
            pipe.transformer = torch.compile(pipe.transformer)
        self.pipe = pipe
        self.device = device
        return f"FLUX.1-{self.variant} from {self.model_dir} on {device} ({dtype_name})"

    def use_lora(self, name: str | None, weight: float) -> None:
        """Make ``name`` at ``weight`` the active adapter (None = base model); loads it on first use."""
        with self._lora_lock:
            key = (name, weight) if name else None
            if key == self._active:
                return
            pipe = self.pipe
            if name is None:
                if self._loaded_loras:
                    pipe.disable_lora()
                self._active = None
                return
            if name in self._loaded_loras:
                self._loaded_loras.move_to_end(name)
            else:
                path = find_lora_file(self.lora_dir, name)
                while len(self._loaded_loras) >= self.settings.flux_max_loras:
                    old, _ = self._loaded_loras.popitem(last=False)
                    pipe.delete_adapters([old])
                    self._active = _UNKNOWN
                try:
                    pipe.load_lora_weights(str(path), adapter_name=name)
                except Exception as exc:  # a corrupt file or one made for another model
                    self._forget_adapter(name)
                    if is_out_of_memory(exc):
                        raise out_of_memory(exc, f"loading LoRA {name!r}") from exc
                    raise InvalidInput(f"LoRA {name!r} could not be loaded: {exc}", code="lora_invalid") from exc
                self._loaded_loras[name] = None
            pipe.enable_lora()
            pipe.set_adapters([name], adapter_weights=[weight])
            self._active = key

    def _forget_adapter(self, name: str) -> None:
        try:
            self.pipe.delete_adapters([name])
        except Exception:  # nothing of it was loaded
            pass
        # A failed load may have left the pipeline on some other adapter set: re-apply next time.
        self._active = _UNKNOWN

    def _call_view(self):
        """A pipeline sharing every model with the loaded one but owning its scheduler.

        The scheduler keeps the running step index and sigmas, and the pipeline object keeps
        per-call fields (guidance, timestep); two calls overlapping on GPU slots must not share them.
        """
        from diffusers import FluxPipeline

        components = dict(self.pipe.components)
        components["scheduler"] = copy.deepcopy(self.pipe.scheduler)
        view = FluxPipeline(**components)
        view.set_progress_bar_config(disable=True)
        return view

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        width: int,
        height: int,
        num_inference_steps: int,
        guidance_scale: float,
        max_sequence_length: int,
    ) -> list["Image"]:
        """One pipeline call; image i comes from ``prompts[i]`` and its own generator seeded ``seeds[i]``."""
        import torch

        # CPU generators: the same seed gives the same image on any device and under CPU offload,
        # and each image's noise does not depend on what else shares the batch.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        try:
            with self._call_lock:
                out = self._call_view()(
                    prompt=prompts,
                    width=width,
                    height=height,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    max_sequence_length=max_sequence_length,
                    generator=generators,
                    output_type="pil",
                )
        except TaskfleetError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                # Give the failed call's blocks back, so the next call does not start fragmented.
                torch.cuda.empty_cache()
                raise out_of_memory(exc, f"a {width}x{height} call of {len(prompts)} image(s)") from exc
            log.exception("pipeline call failed")
            raise TaskfleetError(f"image generation failed: {exc}", code="generation_failed", retryable=True) from exc
        return list(out.images)
