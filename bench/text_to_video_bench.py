"""text_to_video on this machine: a ~60 s script through the whole local fleet, time per stage,
then the compose step's frames/s beside ffmpeg's own encode of the same stills at the same settings.

The fleet is real: task API on SQLite, one consumer serving every stage's workflow, a TTS server
on espeak-ng and a Flux server on the tiny random model the tests build (its images are noise, so
the image stage's time says nothing about a real Flux; compose's does not depend on it).

The target (compose ≥ 0.8× ffmpeg's own encode): after the pipeline, the run's compose input is
submitted again as ``video_compose`` tasks, and each is timed from its start to its end in the fleet
(fetching the media from storage, checking them, rendering, uploading, reporting progress). Between
those runs ffmpeg alone encodes the same stills and speech from local disk with the same settings:
the same size, fps, Ken Burns motion, burned subtitles, x264 and AAC, the one command line a user
would write for that video. The ratio is what the fleet's compose costs over ffmpeg itself.

What the settings cost is printed after, from the same stills: the render with ``motion: none``,
Ken Burns's filter graph into the null muxer (no encode), and ffmpeg's concat demuxer showing the
stills for the same durations with no motion, logo or subtitles. Moving frames cost x264 far more
than the repeated frames of a still (which are all skip blocks), so that last one is the floor of
any video with motion, not a target for one.

    .venv/bin/python bench/text_to_video_bench.py [--size 1360x768] [--fps 25] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# About 150 words: a minute of espeak-ng at its default pace.
SCRIPT = (
    "The harbour was quiet when the first boats came back. Fishermen tied their lines and counted the catch. "
    "They talked about the weather, which had turned colder than anyone expected. On the hill above the town, "
    "the old lighthouse keeper watched the clouds gather over the water. He had seen storms like this before, "
    "and he knew that the night would be long. Down in the market, traders packed away fruit and bread. "
    "Children ran between the stalls, laughing at the wind that pulled at their coats. A bell rang in the square. "
    "Someone shouted that the ferry would not sail again until morning. Travellers sighed, found rooms at the inn, "
    "and ordered soup by the fire. By midnight the rain was heavy and the streets were empty. Only the lamp in the "
    "lighthouse still turned, patient and steady, sweeping its beam across the dark waves until dawn. "
    "In the morning the sky was clear and pale. The boats went out again, one after another, past the rocks "
    "and into the open sea. The keeper climbed down the stairs, made his tea, and slept until noon. "
    "Nobody in the town remembered the storm for long, but the lighthouse keeper wrote it down in his book."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(module: str, args: list[str], env: dict[str, str], ready: str | None, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while ready:
        if proc.poll() is not None:
            raise SystemExit(f"{module} exited with {proc.returncode}; see {log}")
        try:
            r = httpx.get(ready, timeout=1, trust_env=False)
            json_body = r.headers.get("content-type", "").startswith("application/json")
            if r.status_code == 200 and not (json_body and r.json().get("status") == "loading"):
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{module} did not become ready; see {log}")
        time.sleep(0.2)
    return proc


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds()


def run_pipeline(tmp: Path, size: str, fps: int, runs: int) -> tuple[dict, dict[str, float], Path, list[tuple[str, int, float]]]:
    from model_servers.flux.tiny import build_tiny_flux

    model = build_tiny_flux(tmp / "tiny-flux")
    storage, work = tmp / "storage", tmp / "work"
    work.mkdir()
    ports = {k: free_port() for k in ("api", "tts", "flux", "metrics")}
    api_url = f"http://127.0.0.1:{ports['api']}"
    common = {"TASKFLEET_STORAGE_URL": storage.as_uri(), "TASKFLEET_LOG_LEVEL": "warning"}
    procs = []
    try:
        procs.append(start("task_api", ["--host", "127.0.0.1", "--port", str(ports["api"])],
                           {**common, "TASKFLEET_DATABASE_URL": f"sqlite:///{tmp / 'tasks.db'}"}, api_url + "/ready", tmp / "api.log"))
        procs.append(start("model_servers.tts", ["--host", "127.0.0.1", "--port", str(ports["tts"])],
                           {"TASKFLEET_TTS_ENGINE": "espeak"}, f"http://127.0.0.1:{ports['tts']}/health", tmp / "tts.log"))
        procs.append(start("model_servers.flux", ["--host", "127.0.0.1", "--port", str(ports["flux"])],
                           {"TASKFLEET_FLUX_MODEL": str(model), "HF_HUB_OFFLINE": "1"},
                           f"http://127.0.0.1:{ports['flux']}/health", tmp / "flux.log"))
        procs.append(start("consumer", [], {
            **common, "TASKFLEET_API_URL": api_url, "TASKFLEET_WORK_DIR": str(work),
            "TASKFLEET_WORKFLOWS": "tts,image_gen,video_segments,video_compose",
            "TASKFLEET_TTS_URLS": f"http://127.0.0.1:{ports['tts']}", "TASKFLEET_FLUX_URLS": f"http://127.0.0.1:{ports['flux']}",
            "TASKFLEET_METRICS_PORT": str(ports["metrics"]), "TASKFLEET_FETCH_WAIT_S": "1",
        }, f"http://127.0.0.1:{ports['metrics']}/metrics", tmp / "consumer.log"))  # fmt: skip
        with httpx.Client(base_url=api_url, timeout=60, trust_env=False) as client:
            started = time.monotonic()
            created = client.post("/api/video/create-task", json={"script": SCRIPT, "size": size, "fps": fps, "image": {"steps": 2}, "seed": 1})
            created.raise_for_status()
            task_id = created.json()["task_id"]
            while (task := client.get(f"/api/tasks/{task_id}").json())["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
                time.sleep(0.2)
            wall = time.monotonic() - started
            if task["status"] != "COMPLETED":
                raise SystemExit(f"pipeline {task['status']}: {task.get('error')}")
            stages = {"total": wall}
            for stage in task["stages"]:
                rows = [client.get(f"/api/tasks/{i}").json() for i in stage["task_ids"]]
                if rows:
                    stages[f"{stage['name']} ({len(rows)} task{'s' if len(rows) > 1 else ''})"] = seconds(
                        min(r["started_at"] for r in rows), max(r["finished_at"] for r in rows)
                    )
            compose_id = next(s for s in task["stages"] if s["name"] == "compose")["task_ids"][0]
            compose_input = client.get(f"/api/tasks/{compose_id}").json()["input"]
            compared = compose_in_fleet_vs_alone(client, compose_input, storage, tmp / "alone", runs)
            return {"task": task, "compose_input": compose_input}, stages, storage, compared
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)


def local_path(storage: Path, url: str) -> Path:
    """A stored output's file: URLs end in {workflow}/{task_id}/{name} under the storage root."""
    return storage.joinpath(*url.split("?")[0].split("/")[-3:])


def local_media(compose_input: dict, storage: Path, work: Path):
    """The compose input's files where the local storage keeps them, and what build_command needs."""
    from consumer.processors.video_compose import Media, frames_between, with_image_urls
    from taskfleet.workflows.video import ComposeInput

    inp = ComposeInput.model_validate(compose_input)
    segments = with_image_urls(inp.segments, inp.images)
    stills = [local_path(storage, s.url) for s in segments]
    frames = frames_between([(s.start_s, s.end_s) for s in segments], inp.duration_s, inp.settings.fps)
    work.mkdir(exist_ok=True)
    # ffmpeg runs in the work directory and reads the subtitles from there, as video_compose does.
    shutil.copyfile(local_path(storage, inp.srt_url), work / "subtitles.srt")
    media = Media(speech=local_path(storage, inp.audio_url), segments=stills, stock=[False] * len(stills), srt=work / "subtitles.srt")
    return media, frames, inp


def compose_in_fleet_vs_alone(client: httpx.Client, compose_input: dict, storage: Path, work: Path, runs: int) -> list[tuple[str, int, float]]:
    """The target's comparison, in alternating runs while the fleet is otherwise idle: the
    ``video_compose`` task, start to end in the fleet, beside ffmpeg alone with the same command
    line on the same files. Best of ``runs`` each."""
    from consumer.processors.video_compose import build_command

    media, frames, inp = local_media(compose_input, storage, work)
    command = build_command("ffmpeg", media, frames, inp.settings, inp.duration_s, work / "alone.mp4")
    fleet, alone = [], []
    for _ in range(runs):
        alone.append(_wall(command, work))
        created = client.post("/api/tasks", json={"workflow": "video_compose", "input": compose_input})
        created.raise_for_status()
        task_id = created.json()["task_id"]
        while (task := client.get(f"/api/tasks/{task_id}").json())["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            time.sleep(0.1)
        if task["status"] != "COMPLETED":
            raise SystemExit(f"video_compose {task['status']}: {task.get('error')}")
        if task["output"]["frames"] != sum(frames):
            raise SystemExit(f"video_compose made {task['output']['frames']} frames, ffmpeg alone {sum(frames)}")
        fleet.append(seconds(task["started_at"], task["finished_at"]))
    s = inp.settings
    what = f"motion {s.motion}, subtitles {s.subtitles}"
    return [
        (f"ffmpeg alone, the same command ({what})", sum(frames), min(alone)),
        (f"video_compose task in the fleet ({what})", sum(frames), min(fleet)),
    ]


def time_settings(run: dict, storage: Path, tmp: Path, runs: int) -> list[tuple[str, int, float]]:
    """What motion and subtitles cost: the same stills rendered with fewer of them, down to
    ffmpeg's concat demuxer showing the stills with no motion, logo or subtitles."""
    from consumer.processors.video_compose import build_command

    work = tmp / "settings"
    media, frames, inp = local_media(run["compose_input"], storage, work)
    speech, stills = media.speech, media.segments
    s = inp.settings
    results = []

    def timed(label: str, command: list[str]) -> None:
        best = min(_wall(command, work) for _ in range(runs))
        results.append((label, sum(frames), best))

    for motion, subtitles in (("kenburns", "burn"), ("none", "burn"), ("none", "none")):
        settings = s.model_copy(update={"motion": motion, "subtitles": subtitles})
        command = build_command("ffmpeg", media, frames, settings, inp.duration_s, work / "out.mp4")
        timed(f"video_compose's command (motion {motion}, subtitles {subtitles})", command)
        if motion == "kenburns":
            # The same graph into the null muxer: what the filters cost without the encoder.
            graph = command[command.index("-filter_complex") : command.index("-filter_complex") + 2]
            inputs = command[: command.index("-filter_complex")]
            timed("  its filter graph alone (no encode)", [*inputs, *graph, "-map", "[vout]", "-f", "null", "-"])

    concat = work / "stills.txt"
    lines = []
    for path, n in zip(stills, frames):
        lines += [f"file '{path}'", f"duration {n / s.fps:.6f}"]
    lines.append(f"file '{stills[-1]}'")  # the concat demuxer's last duration needs a file after it
    concat.write_text("\n".join(lines) + "\n")
    still_frames = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(concat),
        "-i", str(speech), "-map", "0:v", "-map", "1:a",
        "-vf", f"scale={s.width}:{s.height}:force_original_aspect_ratio=increase,crop={s.width}:{s.height},setsar=1,fps={s.fps},format=yuv420p",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-r", str(s.fps),
        "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-frames:v", str(sum(frames)), str(work / "stills.mp4"),
    ]  # fmt: skip
    timed("ffmpeg concat of the stills, no motion or subtitles", still_frames)
    return results


def _wall(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1360x768")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=2, help="compose timings: best of this many")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as d:
        tmp = Path(d)
        run, stages, storage, compared = run_pipeline(tmp, args.size, args.fps, args.runs)
        out = run["task"]["output"]
        print(f"text_to_video, {len(SCRIPT)} characters → {out['speech_duration_s']:.1f} s of speech, "
              f"{len(out['segments'])} segments, {args.size} at {args.fps} fps (tiny random Flux, 2 steps; {os.cpu_count()} CPUs)")  # fmt: skip
        print("\nwall time per stage (first task start → last task end), s")
        for name, secs in stages.items():
            print(f"  {name:<28} {secs:7.2f}")
        alone_fps = compared[0][1] / compared[0][2]
        print(f"\ncompose, best of {args.runs} alternating runs: frames/s and ratio to ffmpeg alone (target ≥ 0.8)")
        for label, frames, secs in compared:
            print(f"  {label:<62} {frames} frames  {secs:6.2f} s  {frames / secs:7.1f} fps  {frames / secs / alone_fps:5.2f}×")
        print(f"\nwhat the settings cost, best of {args.runs}: frames/s and ratio to ffmpeg alone with the run's settings")
        for label, frames, secs in time_settings(run, storage, tmp, args.runs):
            print(f"  {label:<62} {frames} frames  {secs:6.2f} s  {frames / secs:7.1f} fps  {frames / secs / alone_fps:5.2f}×")


if __name__ == "__main__":
    main()
