"""The ``video_compose`` processor: stills, stock clips, speech, subtitles, logo and music → one MP4.

Everything is fetched into the task's work directory, checked by decoding a little of each, then one ffmpeg run
renders the whole video from a single filter graph: frames stream from the decoders through the
filters to the encoder and the file, so no process ever holds the video in memory. Each segment
gets exactly its share of frames (``frames_between``), so the video is as long as the speech.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.context import TaskContext
from consumer.errors import TaskCancelled
from taskfleet.errors import TaskfleetError
from taskfleet.workflows.video import ComposeInput, ComposeOutput, ComposeSettings, Segment

# Ken Burns: the zoom a still reaches over its segment; alternate segments zoom in and out.
KENBURNS_ZOOM = 0.12
LOGO_WIDTH = 0.15  # of the frame's width
LOGO_MARGIN = 0.03  # of the frame's shorter side
FETCH_CONCURRENCY = 8  # downloads of one compose at a time
CHECK_GROUP = 32  # files one ffmpeg run checks at most: bounds what one process opens at once
CHECK_RUNS = 4  # check runs side by side at most (the consumer's other tasks need cores too)
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]


class MediaInvalid(TaskfleetError):
    """An input file the producer named is not the media it should be; no retry can change that."""

    status, retryable = 422, False


class ComposeFailed(TaskfleetError):
    """ffmpeg failed on inputs that passed their checks: a resource problem or a bug; retried."""

    code, status, retryable = "compose_failed", 500, True


@dataclass
class Media:
    """The local files of one compose, named as the filter graph reads them."""

    speech: Path
    segments: list[Path]  # one per segment: a still or a stock clip
    stock: list[bool]
    srt: Path | None = None
    logo: Path | None = None
    music: Path | None = None


async def process(ctx: TaskContext) -> dict[str, Any]:
    inp = ComposeInput.model_validate(ctx.input)
    settings = inp.settings
    ffmpeg = find_ffmpeg()
    segments = with_image_urls(inp.segments, inp.images)
    await ctx.progress(2, "fetching media")
    media = await fetch_media(ctx, inp, segments)
    await check_media(ffmpeg, media)
    out = ctx.workdir / "video.mp4"
    frames = frames_between([(s.start_s, s.end_s) for s in segments], inp.duration_s, settings.fps)
    command = build_command(ffmpeg, media, frames, settings, inp.duration_s, out)
    await ctx.progress(10, "composing")
    await run_ffmpeg(ctx, command, sum(frames))
    await ctx.progress(95, "storing the video")
    stored = await ctx.put_output(out, out.name, content_type="video/mp4")
    await ctx.progress(100, "done")
    return ComposeOutput(
        video_url=stored.url, duration_s=round(sum(frames) / settings.fps, 3), width=settings.width,
        height=settings.height, fps=settings.fps, frames=sum(frames), segments=segments,
    ).model_dump(mode="json")  # fmt: skip


def find_ffmpeg() -> str:
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        # Retryable: another consumer (or this one, once fixed) may have it.
        raise TaskfleetError("video_compose needs ffmpeg on PATH", code="ffmpeg_missing", status=500, retryable=True)
    return ffmpeg


def with_image_urls(segments: list[Segment], images: list[dict[str, Any]]) -> list[Segment]:
    """The segments with each generated one's image URL, taken from image_gen's outputs in order."""
    generated = [s for s in segments if s.source == "generated"]
    if len(generated) != len(images):
        raise TaskfleetError(
            f"{len(generated)} generated segments but {len(images)} images", code="invalid_input", status=422, retryable=False
        )
    urls = iter(img["images"][0]["url"] for img in images)
    return [s.model_copy(update={"url": next(urls)}) if s.source == "generated" else s for s in segments]


async def fetch_media(ctx: TaskContext, inp: ComposeInput, segments: list[Segment]) -> Media:
    """Every input into the work directory, ``FETCH_CONCURRENCY`` downloads at a time (a video
    has dozens of images; one after another, their round trips to S3 or GCS add up)."""
    settings = inp.settings
    names = {inp.audio_url: "speech" + _suffix(inp.audio_url, ".wav")}
    for s in segments:  # a stock clip used by several segments is fetched once
        if s.url not in names:
            kind = "stock" if s.source == "stock" else "image"
            names[s.url] = f"{kind}_{len(names) - 1}{_suffix(s.url, '.bin')}"
    srt = inp.srt_url if settings.subtitles != "none" else None
    logo, music = settings.logo_url, settings.music_url
    extra = {
        "srt": (srt, "subtitles.srt"),
        "logo": (logo, "logo" + _suffix(logo or "", ".png")),
        "music": (music, "music" + _suffix(music or "", ".audio")),
    }
    wanted = list(names.items()) + [(url, name) for url, name in extra.values() if url]
    room = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def fetch(url: str, name: str) -> Path:
        async with room:
            return await ctx.fetch_input(url, name)

    fetches = [asyncio.ensure_future(fetch(url, name)) for url, name in wanted]
    try:
        paths = dict(zip((name for _, name in wanted), await asyncio.gather(*fetches)))
    except BaseException:
        # One failed (or the task was cancelled): the others stop too, before the error goes up.
        for f in fetches:
            f.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        raise
    return Media(
        speech=paths[names[inp.audio_url]],
        segments=[paths[names[s.url]] for s in segments],
        stock=[s.source == "stock" for s in segments],
        srt=paths[extra["srt"][1]] if srt else None,
        logo=paths[extra["logo"][1]] if logo else None,
        music=paths[extra["music"][1]] if music else None,
    )


def _suffix(url: str, default: str) -> str:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    suffix = Path(name).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 6 and suffix[1:].isalnum() else default


async def decodes(ffmpeg: str, files: list[tuple[Path, str]]) -> bool:
    """Whether ffmpeg decodes every file's first video frame (``kind`` "video") or first second of
    audio ("audio") without an error, all in one run: a process start costs more than a frame.
    A probe alone is not enough: the image demuxer trusts a .png name over its bytes."""
    inputs: list[str] = []
    outputs: list[str] = []
    for i, (path, kind) in enumerate(files):
        inputs += ["-i", str(path)]
        select = [f"{i}:v:0", "-frames:v", "1"] if kind == "video" else [f"{i}:a:0", "-t", "1"]
        outputs += ["-map", *select, "-f", "null", "-"]
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-nostdin", "-v", "error", "-xerror", *inputs, *outputs,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return await proc.wait() == 0
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise


async def check_media(ffmpeg: str, media: Media) -> None:
    """Fail fast, without a retry, on a file that is not what it should be.

    The files are checked in a few ffmpeg runs side by side (one per core this process may use,
    ``CHECK_RUNS`` at most, and at most ``CHECK_GROUP`` files each); a run stops at its first
    bad file without naming it, so only the files of a failed run are then checked one by one,
    in order, to name it."""
    checks: list[tuple[Path, str, str, str]] = [(media.speech, "audio", "invalid_speech", "the speech")]
    seen: set[Path] = set()
    for path, stock in zip(media.segments, media.stock):
        if path not in seen:
            seen.add(path)
            checks.append((path, "video", "invalid_stock_clip" if stock else "invalid_image", "stock clip" if stock else "image"))
    if media.logo:
        checks.append((media.logo, "video", "invalid_logo", "logo_url"))
    if media.music:
        checks.append((media.music, "audio", "invalid_music", "music_url"))
    cores = max(1, min(CHECK_RUNS, len(os.sched_getaffinity(0))))
    size = min(CHECK_GROUP, -(-len(checks) // cores))
    groups = [checks[i : i + size] for i in range(0, len(checks), size)]
    running = asyncio.Semaphore(cores)

    async def group_decodes(group: list[tuple[Path, str, str, str]]) -> bool:
        async with running:
            return await decodes(ffmpeg, [(path, kind) for path, kind, _, _ in group])

    results = await asyncio.gather(*(group_decodes(g) for g in groups))
    for group, ok in zip(groups, results):
        if ok:
            continue
        for path, kind, code, what in group:
            if not await decodes(ffmpeg, [(path, kind)]):
                raise MediaInvalid(f"{what} ({path.name}) is not {'an image or video' if kind == 'video' else 'audio'} ffmpeg can read", code=code)
    # Every file decoded alone though its run failed: a resource problem, left to the render (retried).


def frames_between(spans: list[tuple[float, float]], duration_s: float, fps: int) -> list[int]:
    """Frames per segment: boundaries rounded to whole frames, so they add up to the speech's
    length in frames whatever the rounding; every segment keeps at least one frame."""
    total = max(1, round(duration_s * fps))
    cuts = [0] + [min(total, round(start * fps)) for start, _ in spans[1:]] + [total]
    frames = [max(1, b - a) for a, b in zip(cuts, cuts[1:])]
    frames[-1] = max(1, frames[-1] - (sum(frames) - total))
    return frames


def build_command(ffmpeg: str, media: Media, frames: list[int], s: ComposeSettings, duration_s: float, out: Path) -> list[str]:
    """One ffmpeg run: every segment's input, the filter graph joining them, the encoders."""
    w, h, fps = s.width, s.height, s.fps
    args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(media.speech)]
    graph = []
    for i, (path, stock, n) in enumerate(zip(media.segments, media.stock, frames)):
        k = i + 1  # input 0 is the speech
        cover = f"scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},setsar=1"
        if stock:
            # Looped on input (a short clip fills a long segment), cut to the segment's frames.
            args += ["-stream_loop", "-1", "-t", f"{n / fps + 1:.3f}", "-i", str(path)]
            chain = f"fps={fps},{cover},format=yuv420p,trim=end_frame={n},setpts=N/{fps}/TB"
        elif s.motion == "kenburns":
            args += ["-i", str(path)]
            step = KENBURNS_ZOOM / max(1, n - 1)
            zoom = f"1+{step:.6f}*on" if i % 2 == 0 else f"{1 + KENBURNS_ZOOM:.4f}-{step:.6f}*on"
            chain = (f"{cover},zoompan=z='{zoom}':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
                     f":d={n}:s={w}x{h}:fps={fps},setsar=1,format=yuv420p")  # fmt: skip
        else:
            args += ["-i", str(path)]
            chain = f"{cover},format=yuv420p,loop=loop={n - 1}:size=1:start=0,setpts=N/{fps}/TB"
        graph.append(f"[{k}:v]{chain}[v{i}]")
    count = len(graph)
    graph.append("".join(f"[v{i}]" for i in range(count)) + f"concat=n={count}:v=1:a=0[vcat]")
    video = "vcat"
    next_input = count + 1
    if media.logo:
        args += ["-i", str(media.logo)]
        logo_w = max(2, round(w * LOGO_WIDTH) // 2 * 2)
        margin = round(min(w, h) * LOGO_MARGIN)
        x = str(margin) if s.logo_position.endswith("left") else f"W-w-{margin}"
        y = str(margin) if s.logo_position.startswith("top") else f"H-h-{margin}"
        graph.append(f"[{next_input}:v]scale={logo_w}:-2,format=rgba[logo]")
        graph.append(f"[{video}][logo]overlay=x={x}:y={y}:format=auto[vlogo]")
        video, next_input = "vlogo", next_input + 1
    if media.srt and s.subtitles == "burn":
        # ffmpeg runs in the work directory, so the file name needs no filter-graph escaping.
        graph.append(f"[{video}]subtitles=filename={media.srt.name}[vsub]")
        video = "vsub"
    graph.append(f"[{video}]format=yuv420p[vout]")
    audio = "0:a"
    if media.music:
        args += ["-stream_loop", "-1", "-t", f"{duration_s + 1:.3f}", "-i", str(media.music)]
        graph.append(f"[{next_input}:a]volume={s.music_volume}[music]")
        graph.append("[0:a][music]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[aout]")
        audio, next_input = "[aout]", next_input + 1
    soft = media.srt is not None and s.subtitles == "soft"
    if soft:
        args += ["-i", str(media.srt)]
    args += ["-filter_complex", ";".join(graph), "-map", "[vout]", "-map", audio]
    if soft:
        args += ["-map", f"{next_input}:s", "-c:s", "mov_text"]
    args += [*X264, "-r", str(fps), "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart",
             "-progress", "pipe:1", "-nostats", str(out)]  # fmt: skip
    return args


async def run_ffmpeg(ctx: TaskContext, command: list[str], total_frames: int) -> None:
    """Run ffmpeg in the work directory; its -progress lines move the task's progress, and a
    cancel or timeout (ctx.progress raising, or this coroutine cancelled) kills it."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=str(ctx.workdir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    try:
        while line := await proc.stdout.readline():
            key, _, value = line.decode("ascii", "replace").strip().partition("=")
            if key == "frame" and value.isdigit():
                await ctx.progress(10 + 85 * min(1.0, int(value) / total_frames), "composing")
        await proc.wait()
    except (asyncio.CancelledError, TaskCancelled):
        if proc.returncode is None:  # it may have ended between its last line and the cancel
            proc.kill()
        await proc.wait()
        raise
    finally:
        stderr = (await stderr_task).decode("utf-8", "replace")
    if proc.returncode != 0:
        raise ComposeFailed(f"ffmpeg exited with {proc.returncode}: {stderr.strip()[-500:]}")
