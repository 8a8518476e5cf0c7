"""``python -m model_servers.flux.download``: fetch a FLUX.1 diffusers folder for operators.

Never run at serve or test time. Uses huggingface_hub's ``snapshot_download`` (resumable, checks
each file's hash against the Hub's) into ``TASKFLEET_FLUX_MODEL`` (default ``MODELS_DIR/flux``),
taking only the diffusers parts: the black-forest-labs repositories also hold the same weights as
single files at their top (``flux1-*.safetensors``, ``ae.safetensors``, ~34 GB) that diffusers never
reads. FLUX.1-dev is gated: accept its licence on the Hub and set ``HF_TOKEN``. A Hub that cannot be
reached, or that refuses the repository, ends the command with one line saying so.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

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
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = download(repo, Path(args.dest), revision=args.revision, token=args.token)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        print(f"error: {failure_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    print(path)


def failure_line(exc: BaseException) -> str:
    """One line for an operator: the host that could not be reached, else the Hub's own first line."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    root = chain[-1]
    if isinstance(root, (ConnectionError, socket.gaierror, TimeoutError)):
        return f"cannot reach {_host(chain)}: {type(root).__name__}: {root}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _host(chain: list[BaseException]) -> str:
    # huggingface_hub's HTTP errors carry the request (its own copy of httpx, so found by attribute);
    # a file's bytes may come from a CDN host rather than the Hub's.
    for link in chain:
        try:
            return str(link.request.url.host)  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):
            continue
    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT


if __name__ == "__main__":
    main()
