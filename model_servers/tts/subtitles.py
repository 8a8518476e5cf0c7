"""SRT subtitles from sentence timings.

Cues tile the audio: the first starts at 0, each ends where the next begins, the last ends with
the audio, so a player never shows a blank between sentences. A sentence too long for one cue
(two lines of 42 characters, the usual broadcast limit) becomes several, its time shared by
character count. Formatting SRT is a few lines, so no library is used for it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from taskfleet.workflows.tts import SentenceTiming

LINE_CHARS = 42
CUE_LINES = 2


def build_srt(sentences: Sequence[SentenceTiming], duration_s: float) -> str:
    if not sentences:
        return ""
    total_ms = max(1, round(duration_s * 1000))
    bounds = [0] + [round(s.start_s * 1000) for s in sentences[1:]] + [total_ms]
    cues: list[tuple[int, int, str]] = []
    for i, sentence in enumerate(sentences):
        parts = _cue_texts(sentence.text)
        start, end = bounds[i], bounds[i + 1]
        weights = [len(p) for p in parts]
        acc = 0
        for part, w in zip(parts, weights):
            cue_start = start + (end - start) * acc // sum(weights)
            acc += w
            cue_end = start + (end - start) * acc // sum(weights)
            cues.append((cue_start, cue_end, part))
    # Rounding can make a cue empty or touch its predecessor's start; keep times strictly increasing.
    fixed: list[tuple[int, int, str]] = []
    prev_end = 0
    for start, end, text in cues:
        start = max(start, prev_end)
        end = max(end, start + 1)
        fixed.append((start, end, text))
        prev_end = end
    return "\n".join(
        f"{n}\n{_stamp(start)} --> {_stamp(end)}\n{text}\n" for n, (start, end, text) in enumerate(fixed, 1)
    )


def _cue_texts(text: str) -> list[str]:
    lines = textwrap.wrap(text, LINE_CHARS, break_long_words=True, break_on_hyphens=False) or [text]
    return ["\n".join(lines[i : i + CUE_LINES]) for i in range(0, len(lines), CUE_LINES)]


def _stamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"


def parse_srt(srt: str) -> list[tuple[float, float, str]]:
    """(start_s, end_s, text) per cue; used by tests and by callers that re-time subtitles."""
    cues = []
    for block in srt.strip().split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) < 2:
            continue
        start, _, end = lines[1].partition(" --> ")
        cues.append((_seconds(start), _seconds(end), "\n".join(lines[2:])))
    return cues


def _seconds(stamp: str) -> float:
    hms, _, millis = stamp.strip().partition(",")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + int(millis) / 1000
