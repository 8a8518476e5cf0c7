"""Settings of the Flux model server (env prefix ``TASKFLEET_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from model_servers.base import ModelServerSettings


class FluxSettings(ModelServerSettings):
    port: int = 8102
    # A local diffusers folder (model_index.json at its top). Empty = MODELS_DIR/flux.
    flux_model: str = ""
    # LoRA files (NAME.safetensors, or NAME/ holding one .safetensors). Empty = MODELS_DIR/loras.
    lora_dir: str = ""
    # auto: FLUX.1-schnell when the transformer has no guidance embedding, else FLUX.1-dev.
    flux_variant: Literal["auto", "schnell", "dev"] = "auto"
    flux_device: str = "auto"  # auto = cuda when available, else cpu
    flux_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto = bf16 on GPU, fp32 on CPU
    flux_cpu_offload: Literal["none", "model", "sequential"] = "none"
    flux_vae_tiling: bool = False
    flux_compile: bool = False
    # torch intra-op threads when running on CPU; 0 = torch's default (one per core). On a shared
    # box, 1 avoids OpenMP threads waiting on each other for a core (5x slower measured at load 5 on 2 cores).
    flux_cpu_threads: int = Field(0, ge=0)
    # Images one pipeline call may carry; concurrent compatible requests share a call up to this.
    # 1 turns request batching off.
    flux_max_batch: int = Field(4, ge=1, le=64)
    # LoRAs kept loaded; past this the least recently used one is unloaded (then reloaded when asked for).
    flux_max_loras: int = Field(8, ge=1)

    def model_path(self) -> Path:
        return Path(self.flux_model) if self.flux_model else Path(self.models_dir) / "flux"

    def lora_path(self) -> Path:
        return Path(self.lora_dir) if self.lora_dir else Path(self.models_dir) / "loras"
