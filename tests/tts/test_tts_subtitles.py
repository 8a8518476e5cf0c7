from hypothesis import given, strategies as st

from model_servers.tts.subtitles import LINE_CHARS, build_srt, parse_srt
from taskfleet.workflows.tts import SentenceTiming

from tts_helpers import check_srt_tiles


def timings(spec):
    out, t = [], 0.0
    for i, (text, length, gap) in enumerate(spec):
        if i:
            t += gap
        out.append(SentenceTiming(index=i, text=text, start_s=round(t, 3), end_s=round(t + length, 3)))
        t += length
    return out, round(t, 3)


def test_format_and_tiling():
    sentences, duration = timings([("Hello there.", 0.7, 0), ("Second one here.", 1.2, 0.25)])
    srt = build_srt(sentences, duration)
    assert srt == (
        "1\n00:00:00,000 --> 00:00:00,950\nHello there.\n\n"
        "2\n00:00:00,950 --> 00:00:02,150\nSecond one here.\n"
    )


def test_long_sentence_becomes_several_two_line_cues():
    text = " ".join(["subtitle"] * 40)  # 359 characters
    sentences, duration = timings([(text, 20.0, 0)])
    cues = parse_srt(build_srt(sentences, duration))
    assert len(cues) > 1
    for _, _, cue in cues:
        lines = cue.split("\n")
        assert len(lines) <= 2 and all(len(line) <= LINE_CHARS for line in lines)
    check_srt_tiles(build_srt(sentences, duration), duration, [text])


def test_hours_in_timestamps():
    sentences, duration = timings([("a", 3725.5, 0)])
    assert "01:02:05,500" in build_srt(sentences, duration)


@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abc de", min_size=1, max_size=200).map(str.strip).filter(bool).map(lambda s: " ".join(s.split())),
            st.floats(0.001, 30),
            st.floats(0, 2),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_cues_are_ordered_disjoint_and_cover_the_audio(spec):
    sentences, duration = timings(spec)
    check_srt_tiles(build_srt(sentences, duration), duration, [s.text for s in sentences])
