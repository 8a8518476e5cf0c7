"""``taskfleet models download face_swap``: fetch buffalo_l, inswapper and GFPGAN for operators.

Never run at serve or test time. Each file streams to ``.NAME.part`` in the models directory under a
progress bar (size and speed); a run that stops part-way leaves that file, and the next run asks the
server for the rest only (HTTP Range). The whole file's size and SHA-256 are checked against the
pinned values before it is moved into place (a zip is unpacked). Pins and URLs come from the
built-in manifest, a JSON ``--manifest`` file, or ``--url NAME=URL`` / ``--sha256 NAME=HEX``.
Every installed file's hash goes to ``SHA256SUMS``; ``--verify`` checks that each selected asset is
there and unchanged. A host that cannot be reached stops the run with one line naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from model_servers.face_swap.settings import FaceSwapSettings

FACEFUSION_ASSETS = "https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0"


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    dest: str  # relative to the models directory
    sha256: str = ""
    size: int | None = None  # bytes of the downloaded file (the zip for unzipped assets)
    unzip: bool = False  # dest is then a directory
    default: bool = True


# Each pin (SHA-256 and size) was found in two independent public sources before it went in; a Git
# LFS pointer's "oid sha256:" and "size" lines are the hash and size of the file itself.
#
#   buffalo_l           Visionatrix/Visionatrix visionatrix/basic_node_list.py (hash, size);
#                       SodiqAbdulwaris/FaceIdentify docs/research/reference-model-selection.md (hash, size)
#   inswapper_128_fp16  Hass7777/swap-models inswapper_128_fp16.onnx (LFS pointer);
#                       vanukrishnans-source/face-swap-video-windows fsv/models.py (hash, size, this URL);
#                       idootop/TinyFace tinyface/core/swapper.py (hash)
#   gfpgan_1.4          gavinYChsu/fuse .assets/models/gfpgan_1.4.onnx (LFS pointer);
#                       openphotoedit/openphotoedit apps/web/src/lib/models.ts (hash, size);
#                       idootop/TinyFace tinyface/core/enhancer.py (hash)
#   inswapper_128       thebiglaskowski/faceoff inswapper_128.onnx (LFS pointer);
#                       SumDeusVitae/FaceSwap_v01 inswapper_128.onnx (LFS pointer)
#
# The fp32 swapper is InsightFace's original file, fetched from a Hugging Face mirror: FaceFusion's
# inswapper_128.onnx is a different re-export (a290273e..., 555,303,150 bytes).
MANIFEST = (
    Asset(
        "buffalo_l",
        "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        "models/buffalo_l",
        sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
        size=288_621_354,
        unzip=True,
    ),
    Asset(
        "inswapper_128_fp16",
        f"{FACEFUSION_ASSETS}/inswapper_128_fp16.onnx",
        "inswapper_128_fp16.onnx",
        sha256="c4eccca86ad177586c85c28bf1a64a9d9ed237e283a15818d831f7facfd3f420",
        size=277_680_829,
    ),
    Asset(
        "gfpgan_1.4",
        f"{FACEFUSION_ASSETS}/gfpgan_1.4.onnx",
        "gfpgan_1.4.onnx",
        sha256="accc4757b26bdb89b32b4d3500d4f79c9dff97c1dd7c7104bf9dcb95e3311385",
        size=340_299_087,
    ),
    Asset(
        "inswapper_128",
        "https://huggingface.co/ezioruan/inswapper_128.onnx/resolve/main/inswapper_128.onnx",
        "inswapper_128.onnx",
        sha256="e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
        size=554_253_681,
        default=False,
    ),
)
SUMS = "SHA256SUMS"
# Transfers that break mid-file are resumed this many times within one run before giving up.
RESUMES = 5


class DownloadError(Exception):
    """One asset could not be installed; the others may still be."""


class Unreachable(DownloadError):
    """No connection to a host at all: every later file would fail the same way, so the run stops."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(models_dir: Path, asset: Asset) -> Path:
    return models_dir / f".{asset.name}.part"


def _marker(models_dir: Path, asset: Asset) -> Path:
    """Holds the SHA-256 of the archive an unzipped asset came from (its files are in SHA256SUMS)."""
    return models_dir / f".{asset.name}.archive-sha256"


def fetch(asset: Asset, models_dir: Path, client: httpx.Client, *, allow_unpinned: bool, progress: bool = True) -> str:
    """Download, verify and install one asset; returns the SHA-256 of what was downloaded."""
    if not asset.sha256 and not allow_unpinned:
        raise DownloadError(f"{asset.name}: no SHA-256 pinned; pass --sha256 {asset.name}=HEX or --allow-unpinned")
    part = part_path(models_dir, asset)
    part.parent.mkdir(parents=True, exist_ok=True)
    download(asset, part, client, progress=progress)
    got = sha256_of(part)
    if asset.sha256 and got != asset.sha256.lower():
        part.unlink()  # not the pinned file: resuming from it could never succeed
        raise DownloadError(f"{asset.name}: checksum mismatch: expected {asset.sha256}, got {got}")
    if not asset.sha256:
        print(f"{asset.name}: not pinned; its SHA-256 is {got}", file=sys.stderr)
    target = models_dir / asset.dest
    if asset.unzip:
        try:
            _unzip(part, target)
        except (zipfile.BadZipFile, DownloadError) as exc:
            part.unlink()  # verified yet unusable: fetching the same bytes again cannot help
            raise DownloadError(f"{asset.name}: {exc}") from None
        part.unlink()
        _marker(models_dir, asset).write_text(got + "\n")
    else:
        os.replace(part, target)
    return got


def download(asset: Asset, part: Path, client: httpx.Client, *, progress: bool = True) -> None:
    """Bring ``part`` up to the whole file, resuming from what it already holds."""
    for attempt in range(RESUMES + 1):
        have = part.stat().st_size if part.exists() else 0
        if asset.size is not None and have > asset.size:
            part.unlink()
            have = 0
        if asset.size is not None and have == asset.size:
            return
        try:
            if _transfer(asset, part, client, have, progress):
                return
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            raise Unreachable(f"cannot reach {_host(exc, asset.url)} ({asset.name}): {_reason(exc)}") from None
        except httpx.TransportError as exc:
            if attempt == RESUMES:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{asset.name}: transfer kept breaking ({_reason(exc)}); {have} bytes kept, run again to resume"
                ) from None
    raise DownloadError(f"{asset.name}: {httpx.URL(asset.url).host} kept answering without the whole file")


def _transfer(asset: Asset, part: Path, client: httpx.Client, have: int, progress: bool) -> bool:
    """One request for the bytes past ``have``; True when ``part`` then holds the whole file."""
    from tqdm import tqdm

    # identity: a compressed transfer would make byte offsets and Content-Length mean something else.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with client.stream("GET", asset.url, headers=headers) as response:
        host = response.url.host
        if have and response.status_code == 416:
            # Nothing past ``have``: the part is already whole if the server's length agrees.
            total = _range_total(response.headers.get("content-range"))
            if total == have:
                return True
            part.unlink()
            return False
        if have and response.status_code == 206:
            if _range_start(response.headers.get("content-range")) != have:
                part.unlink()  # a range other than the one asked for: start over
                return False
            mode = "ab"
        elif response.status_code == 200:
            have, mode = 0, "wb"  # the server ignores Range: start over
        else:
            raise DownloadError(f"{asset.name}: {asset.url} answered HTTP {response.status_code}")
        length = response.headers.get("content-length")
        total = have + int(length) if length is not None else asset.size
        if asset.size is not None and total is not None and total != asset.size:
            raise DownloadError(f"{asset.name}: {host} offers {total} bytes, the pinned file has {asset.size}")
        with open(part, mode) as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=asset.name, disable=not progress
        ) as bar:
            for chunk in response.iter_bytes():  # as they arrive: a break keeps every byte received
                fh.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise httpx.RemoteProtocolError(f"connection closed at {size} of {total} bytes")
    return True


def _host(exc: httpx.HTTPError, url: str) -> str:
    """The host the failed request went to (after redirects, not necessarily the asset URL's)."""
    try:
        return exc.request.url.host
    except RuntimeError:  # an error raised with no request attached
        return httpx.URL(url).host


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _range_start(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _range_total(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\*|\d+-\d+)/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None


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
        return sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else []
    return [target] if target.is_file() else []


def read_sums(models_dir: Path) -> dict[str, str]:
    sums_path = models_dir / SUMS
    known: dict[str, str] = {}
    if sums_path.is_file():
        for line in sums_path.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            if rel:
                known[rel] = digest
    return known


def write_sums(models_dir: Path, assets: list[Asset]) -> None:
    """Record the files of ``assets`` in SHA256SUMS, replacing what it said about their folders."""
    known = read_sums(models_dir)
    for asset in assets:
        prefix = asset.dest.rstrip("/") + "/"
        known = {rel: d for rel, d in known.items() if rel != asset.dest and not rel.startswith(prefix)}
        for path in installed_files(models_dir, asset):
            known[path.relative_to(models_dir).as_posix()] = sha256_of(path)
    (models_dir / SUMS).write_text("".join(f"{d}  {rel}\n" for rel, d in sorted(known.items())))


class _Hashes(dict):
    """SHA-256 per path, each file read once however many checks ask."""

    def __missing__(self, path: Path) -> str:
        self[path] = sha256_of(path)
        return self[path]


def asset_problems(models_dir: Path, asset: Asset, sums: dict[str, str], hashes: _Hashes) -> list[str]:
    files = installed_files(models_dir, asset)
    if not files:
        return [f"{asset.name}: missing ({models_dir / asset.dest})"]
    if not asset.unzip and asset.sha256:
        if hashes[files[0]] != asset.sha256.lower():
            return [f"{asset.name}: {asset.dest} does not match its pinned SHA-256"]
        return []
    problems = []
    for path in files:
        rel = path.relative_to(models_dir).as_posix()
        if rel not in sums:
            problems.append(f"{asset.name}: {rel} is not recorded in {SUMS}")
        elif hashes[path] != sums[rel]:
            problems.append(f"{asset.name}: {rel}: checksum mismatch")
    return problems


def up_to_date(models_dir: Path, asset: Asset, sums: dict[str, str], hashes: _Hashes) -> bool:
    """Already installed from the pinned file, so a rerun (a retried Job) need not fetch it again."""
    if not asset.sha256 or asset_problems(models_dir, asset, sums, hashes):
        return False
    marker = _marker(models_dir, asset)
    return not asset.unzip or (marker.is_file() and marker.read_text().strip() == asset.sha256.lower())


def verify(models_dir: Path, assets: list[Asset]) -> list[str]:
    """Problems with the installed files (empty: all good): a selected asset missing or changed, or a
    file SHA256SUMS lists that is gone or differs."""
    sums = read_sums(models_dir)
    hashes = _Hashes()
    problems = [p for asset in assets for p in asset_problems(models_dir, asset, sums, hashes)]
    for rel, digest in sums.items():
        path = models_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif hashes[path] != digest:
            problems.append(f"{rel}: checksum mismatch")
    return list(dict.fromkeys(problems))


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not rest:
            raise SystemExit(f"{flag} takes NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def _pinned(asset: Asset, sha256: str, size: int | None) -> Asset:
    # A new hash names another file, so the built-in size no longer applies unless given with it.
    return replace(asset, sha256=sha256, size=size)


def resolve_assets(args: argparse.Namespace) -> list[Asset]:
    assets = {a.name: a for a in MANIFEST}
    if args.manifest:
        for name, entry in json.loads(Path(args.manifest).read_text()).items():
            base = assets.get(name) or Asset(name, "", entry.get("dest", name), default=False)
            if "sha256" in entry:
                base = _pinned(base, entry["sha256"], entry.get("size"))
            assets[name] = replace(base, **{k: v for k, v in entry.items() if k in ("url", "dest", "unzip", "size")})
    for name, url in _pairs(args.url, "--url").items():
        assets[name] = replace(assets[name], url=url) if name in assets else Asset(name, url, name)
    for name, digest in _pairs(args.sha256, "--sha256").items():
        if name not in assets:
            raise SystemExit(f"--sha256 names an unknown asset {name!r}")
        assets[name] = _pinned(assets[name], digest, None)
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
    default_names = " ".join(a.name for a in MANIFEST if a.default)
    parser = argparse.ArgumentParser(prog="taskfleet models download face_swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default=settings.models_dir, help="default: TASKFLEET_MODELS_DIR")
    parser.add_argument("--manifest", help='JSON {"name": {"url": ..., "sha256": ..., "size": ...}} over the built-in one')
    parser.add_argument("--url", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"assets to fetch or verify (default: {default_names})")
    parser.add_argument("--allow-unpinned", action="store_true", help="install files with no pinned SHA-256 (prints it)")
    parser.add_argument("--verify", action="store_true", help="only check that the assets are installed and unchanged")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed connection or 5xx (default 3)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    models_dir = Path(args.models_dir).expanduser()
    assets = resolve_assets(args)

    if args.verify:
        problems = verify(models_dir, assets)
        for p in problems:
            print(p, file=sys.stderr)
        names = ", ".join(a.name for a in assets)
        print(f"{names}: installed and unchanged" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0

    from httpx_retries import Retry, RetryTransport

    transport = RetryTransport(retry=Retry(total=args.retries, backoff_factor=1.0))
    failed: list[Asset] = []
    done: list[Asset] = []
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        sums, hashes = read_sums(models_dir), _Hashes()
        with httpx.Client(transport=transport, follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0)) as client:
            for asset in assets:
                if up_to_date(models_dir, asset, sums, hashes):
                    print(f"{asset.name}: already installed at {models_dir / asset.dest}")
                    continue
                try:
                    digest = fetch(asset, models_dir, client, allow_unpinned=args.allow_unpinned, progress=not args.no_progress)
                except Unreachable:
                    raise  # ends the run below: the files after it would fail the same way
                except DownloadError as exc:
                    failed.append(asset)
                    print(f"error: {exc}", file=sys.stderr)
                    continue
                done.append(asset)
                print(f"{asset.name}: installed at {models_dir / asset.dest} (sha256 {digest})")
    except (Unreachable, OSError) as exc:  # OSError: a models directory that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if done:
            write_sums(models_dir, done)
    return 1 if failed else 0


if __name__ == "__main__":
    main()
