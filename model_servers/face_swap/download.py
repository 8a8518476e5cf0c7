"""``taskfleet models download face_swap``: fetch buffalo_l, inswapper and GFPGAN for operators.

Never run at serve or test time. Each file streams to ``NAME.part`` under a progress bar, its
SHA-256 is checked against the pinned value, and only then is it moved into place (a zip is
unpacked). Pins and URLs come from the built-in manifest, a JSON ``--manifest`` file, or
``--url NAME=URL`` / ``--sha256 NAME=HEX``. The built-in entries carry no pins: we could not fetch
the files where this was written, so rather than ship hashes nobody checked, a download without a
pin is refused unless ``--allow-unpinned``, which prints the hash it saw so it can be pinned.
Every installed file's hash goes to ``SHA256SUMS`` in the models directory; ``--verify`` rechecks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from model_servers.face_swap.settings import FaceSwapSettings

FACEFUSION_ASSETS = "https://github.com/facefusion/facefusion-assets/releases/download/models"


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    dest: str  # relative to the models directory
    sha256: str = ""
    unzip: bool = False  # dest is then a directory
    default: bool = True


MANIFEST = (
    Asset("buffalo_l", "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip", "models/buffalo_l", unzip=True),
    Asset("inswapper_128_fp16", f"{FACEFUSION_ASSETS}/inswapper_128_fp16.onnx", "inswapper_128_fp16.onnx"),
    Asset("inswapper_128", f"{FACEFUSION_ASSETS}/inswapper_128.onnx", "inswapper_128.onnx", default=False),
    Asset("gfpgan_1.4", f"{FACEFUSION_ASSETS}/gfpgan_1.4.onnx", "gfpgan_1.4.onnx"),
)
SUMS = "SHA256SUMS"


class DownloadError(Exception):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(asset: Asset, models_dir: Path, client: httpx.Client, *, allow_unpinned: bool, progress: bool = True) -> str:
    """Download, verify and install one asset; returns its SHA-256."""
    from tqdm import tqdm

    if not asset.sha256 and not allow_unpinned:
        raise DownloadError(f"{asset.name}: no SHA-256 pinned; pass --sha256 {asset.name}=HEX or --allow-unpinned")
    target = models_dir / asset.dest
    part = models_dir / f".{asset.name}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with client.stream("GET", asset.url) as response:
            if response.status_code != 200:
                raise DownloadError(f"{asset.name}: {asset.url} answered HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0) or None
            with open(part, "wb") as fh, tqdm(
                total=total, unit="B", unit_scale=True, desc=asset.name, disable=not progress
            ) as bar:
                for chunk in response.iter_bytes(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if asset.sha256 and got != asset.sha256.lower():
            raise DownloadError(f"{asset.name}: checksum mismatch: expected {asset.sha256}, got {got}")
        if not asset.sha256:
            print(f"{asset.name}: not pinned; its SHA-256 is {got}", file=sys.stderr)
        if asset.unzip:
            _unzip(part, target)
        else:
            os.replace(part, target)
        return got
    except httpx.HTTPError as exc:
        raise DownloadError(f"{asset.name}: {type(exc).__name__}: {exc}") from None
    finally:
        part.unlink(missing_ok=True)


def _unzip(archive: Path, target: Path) -> None:
    staging = target.with_name(target.name + ".unpack")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            # Refuse paths that climb out of the staging folder (zip slip).
            if member.startswith("/") or ".." in Path(member).parts:
                raise DownloadError(f"unsafe path in archive: {member}")
        zf.extractall(staging)
    entries = list(staging.iterdir())
    inner = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging  # zips with or without a top folder
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(inner), str(target))
    shutil.rmtree(staging, ignore_errors=True)


def installed_files(models_dir: Path, asset: Asset) -> list[Path]:
    target = models_dir / asset.dest
    if asset.unzip:
        return sorted(p for p in target.rglob("*") if p.is_file())
    return [target] if target.is_file() else []


def write_sums(models_dir: Path, assets: list[Asset]) -> None:
    sums_path = models_dir / SUMS
    known: dict[str, str] = {}
    if sums_path.is_file():
        for line in sums_path.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            if rel:
                known[rel] = digest
    for asset in assets:
        for path in installed_files(models_dir, asset):
            known[path.relative_to(models_dir).as_posix()] = sha256_of(path)
    sums_path.write_text("".join(f"{d}  {rel}\n" for rel, d in sorted(known.items())))


def verify(models_dir: Path) -> list[str]:
    """Problems with installed files against SHA256SUMS (empty: all good)."""
    sums_path = models_dir / SUMS
    if not sums_path.is_file():
        return [f"{sums_path} does not exist"]
    problems = []
    for line in sums_path.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        path = models_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_of(path) != digest:
            problems.append(f"{rel}: checksum mismatch")
    return problems


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not rest:
            raise SystemExit(f"{flag} takes NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def resolve_assets(args: argparse.Namespace) -> list[Asset]:
    assets = {a.name: a for a in MANIFEST}
    if args.manifest:
        for name, entry in json.loads(Path(args.manifest).read_text()).items():
            base = assets.get(name) or Asset(name, "", entry.get("dest", name), default=False)
            assets[name] = replace(base, **{k: v for k, v in entry.items() if k in ("url", "sha256", "dest", "unzip")})
    for name, url in _pairs(args.url, "--url").items():
        assets[name] = replace(assets[name], url=url) if name in assets else Asset(name, url, name)
    for name, digest in _pairs(args.sha256, "--sha256").items():
        if name not in assets:
            raise SystemExit(f"--sha256 names an unknown asset {name!r}")
        assets[name] = replace(assets[name], sha256=digest)
    names = args.only or [a.name for a in assets.values() if a.default]
    unknown = [n for n in names if n not in assets]
    if unknown:
        raise SystemExit(f"unknown asset(s): {', '.join(unknown)}; known: {', '.join(assets)}")
    return [assets[n] for n in names]


def main(argv: list[str] | None = None) -> None:
    """The CLI entry: exits non-zero when any asset failed (callers may ignore a return value)."""
    code = run(argv)
    if code:
        raise SystemExit(code)


def run(argv: list[str] | None = None) -> int:
    settings = FaceSwapSettings()
    parser = argparse.ArgumentParser(prog="taskfleet models download face_swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default=settings.models_dir, help="default: TASKFLEET_MODELS_DIR")
    parser.add_argument("--manifest", help='JSON {"name": {"url": ..., "sha256": ...}} overriding the built-in one')
    parser.add_argument("--url", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="assets to fetch (default: buffalo_l inswapper_128_fp16 gfpgan_1.4)")
    parser.add_argument("--allow-unpinned", action="store_true", help="install files with no pinned SHA-256 (prints it)")
    parser.add_argument("--verify", action="store_true", help="only check installed files against SHA256SUMS")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    models_dir = Path(args.models_dir).expanduser()

    if args.verify:
        problems = verify(models_dir)
        for p in problems:
            print(p, file=sys.stderr)
        print("all files match SHA256SUMS" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0

    assets = resolve_assets(args)
    models_dir.mkdir(parents=True, exist_ok=True)
    from httpx_retries import Retry, RetryTransport

    transport = RetryTransport(retry=Retry(total=3, backoff_factor=1.0))
    failed = []
    with httpx.Client(transport=transport, follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0)) as client:
        for asset in assets:
            try:
                digest = fetch(asset, models_dir, client, allow_unpinned=args.allow_unpinned, progress=not args.no_progress)
                print(f"{asset.name}: installed at {models_dir / asset.dest} (sha256 {digest})")
            except DownloadError as exc:
                failed.append(asset)
                print(f"error: {exc}", file=sys.stderr)
    write_sums(models_dir, [a for a in assets if a not in failed])
    return 1 if failed else 0


if __name__ == "__main__":
    main()
