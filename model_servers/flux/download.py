"""``python -m model_servers.flux.download``: fetch a FLUX.1 diffusers folder for operators.

Never run at serve or test time. Uses huggingface_hub's ``snapshot_download`` (resumable, checks
each file's hash against the Hub's) into ``TASKFLEET_FLUX_MODEL`` (default ``MODELS_DIR/flux``),
taking only the diffusers parts: the black-forest-labs repositories also hold the same weights as
single files at their top (``flux1-*.safetensors``, ``ae.safetensors``, ~34 GB) that diffusers never
reads. FLUX.1-dev is gated: accept its licence on the Hub and set ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model_servers.flux.settings import FluxSettings

REPOS = {"schnell": "black-forest-labs/FLUX.1-schnell", "dev": "black-forest-labs/FLUX.1-dev"}
DIFFUSERS_PARTS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "transformer/*",
    "vae/*",
]


def download(repo: str, dest: Path, *, revision: str | None = None, token: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo, revision=revision, local_dir=dest, allow_patterns=DIFFUSERS_PARTS, token=token)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    settings = FluxSettings()
    ap = argparse.ArgumentParser(prog="taskfleet models download flux", description=__doc__.splitlines()[0])
    ap.add_argument("variant", nargs="?", default="schnell", help="schnell, dev, or a Hub repo id (owner/name)")
    ap.add_argument("--dest", default=str(settings.model_path()), help="default: TASKFLEET_FLUX_MODEL or MODELS_DIR/flux")
    ap.add_argument("--revision", help="a commit hash to pin")
    ap.add_argument("--token", help="default: HF_TOKEN / the huggingface-cli login")
    args = ap.parse_args(argv)
    repo = REPOS.get(args.variant, args.variant)
    print(download(repo, Path(args.dest), revision=args.revision, token=args.token))


if __name__ == "__main__":
    main()
