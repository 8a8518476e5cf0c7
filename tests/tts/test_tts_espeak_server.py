"""The TTS server on the real espeak-ng binary: real speech, timings, SRT, formats, refusals."""

import subprocess

import httpx
import numpy as np
import pytest

from model_servers.tts.app import create_app
from model_servers.tts.audio import find_ffmpeg
from model_servers.tts.subtitles import parse_srt
from support import LiveServer

from tts_helpers import OutOfMemoryEngine, check_srt_tiles, read_wav, synthesize, wav_bytes_duration

SHORT = "The quick brown fox jumps over the lazy dog."
LONG = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! "
    "How vexingly quick daft zebras jump? Sphinx of black quartz, judge my vow. "
    "The five boxing wizards jump quickly."
)


async def test_health_and_voices(espeak):
    health = (await espeak.get("/health")).json()
    assert health["status"] == "healthy" and health["model_loaded"] and health["device"] == "cpu"
    voices = (await espeak.get("/voices")).json()
    names = {v["name"] for v in voices["voices"]}
    assert voices["engine"] == "espeak" and {"en-us", "de", "fr-fr"} <= names
    assert voices["default_voice"] in names
    assert not any(v["clones_voice"] for v in voices["voices"])


async def test_real_speech_with_sentence_timings(espeak, tmp_path):
    result = await synthesize(espeak, tmp_path, text=LONG)
    meta = result.metadata
    samples, rate = read_wav(result.audio_path)
    assert rate == meta.sample_rate == 22050
    assert abs(samples.size / rate - meta.duration_s) < 0.002
    assert meta.size_bytes == result.audio_path.stat().st_size
    # Speech, not a tone or noise: loud syllables separated by quiet stretches.
    frame = rate // 50
    env = np.sqrt(np.mean(samples[: samples.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    assert env.max() > 0.05
    loud = env > 0.3 * env.max()
    syllable_onsets = np.count_nonzero(loud[1:] & ~loud[:-1])
    assert syllable_onsets >= 20, syllable_onsets  # ~45 syllables in LONG
    assert 0.15 < loud.mean() < 0.9

    texts = [s.text for s in meta.sentences]
    assert texts == [
        "The quick brown fox jumps over the lazy dog.",
        "Pack my box with five dozen liquor jugs!",
        "How vexingly quick daft zebras jump?",
        "Sphinx of black quartz, judge my vow.",
        "The five boxing wizards jump quickly.",
    ]
    for s, nxt in zip(meta.sentences, meta.sentences[1:]):
        assert s.start_s < s.end_s < nxt.start_s
    assert meta.sentences[0].start_s == 0.0 and meta.sentences[-1].end_s == meta.duration_s
    # Each sentence's span holds sound; the pauses between them are silent.
    for s, nxt in zip(meta.sentences, meta.sentences[1:]):
        gap = samples[int(s.end_s * rate) + 10 : int(nxt.start_s * rate) - 10]
        span = samples[int(s.start_s * rate) : int(s.end_s * rate)]
        assert np.abs(gap).max(initial=0) < 1e-3 and np.abs(span).max() > 0.1
    # Every sentence is levelled to the same loudness (-20 dBFS RMS over its voiced frames).
    for s in meta.sentences:
        span = samples[int(s.start_s * rate) : int(s.end_s * rate)]
        frames = np.sqrt(np.mean(span[: span.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
        voiced = frames[frames > 0.1 * frames.max()]
        assert abs(20 * np.log10(np.sqrt(np.mean(voiced**2))) + 20) < 1.0
    check_srt_tiles(meta.srt, meta.duration_s, texts)


async def test_longer_text_gives_longer_audio(espeak, tmp_path):
    short = await synthesize(espeak, tmp_path, text=SHORT)
    long = await synthesize(espeak, tmp_path, text=LONG)
    assert long.metadata.duration_s > 3 * short.metadata.duration_s


async def test_speed_two_roughly_halves_the_duration(espeak, tmp_path):
    normal = await synthesize(espeak, tmp_path, text=LONG, speed=1.0)
    fast = await synthesize(espeak, tmp_path, text=LONG, speed=2.0)
    slow = await synthesize(espeak, tmp_path, text=LONG, speed=0.5)
    ratio = fast.metadata.duration_s / normal.metadata.duration_s
    assert 0.35 < ratio < 0.65, ratio
    assert slow.metadata.duration_s > 1.6 * normal.metadata.duration_s


async def test_languages_pick_voices(espeak, tmp_path):
    de = await synthesize(espeak, tmp_path, text="Guten Morgen. Wie geht es dir?", language="de")
    assert de.metadata.voice == "de" and de.metadata.language == "de"
    variant = await synthesize(espeak, tmp_path, text="Hello.", voice="en-us+f3")
    assert variant.metadata.voice == "en-us+f3"
    bad = await espeak.post("/tts", json={"text": "Hi.", "voice": "xx-nope"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_voice"
    bad = await espeak.post("/tts", json={"text": "Hi.", "language": "tlh"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_voice"


async def test_mp3_decodes_to_the_same_duration(espeak, tmp_path):
    result = await synthesize(espeak, tmp_path, text=LONG, format="mp3")
    assert result.metadata.format == "mp3" and result.metadata.content_type == "audio/mpeg"
    decoded = tmp_path / "decoded.wav"
    subprocess.run([find_ffmpeg(), "-v", "error", "-i", str(result.audio_path), str(decoded)], check=True)
    # mp3 adds encoder delay and frame padding: tens of milliseconds at most.
    assert abs(wav_bytes_duration(decoded.read_bytes()) - result.metadata.duration_s) < 0.1
    check_srt_tiles(result.metadata.srt, result.metadata.duration_s, [s.text for s in result.metadata.sentences])


async def test_accept_audio_returns_the_audio_alone(espeak):
    response = await espeak.post("/tts", json={"text": SHORT}, headers={"Accept": "audio/wav"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert abs(wav_bytes_duration(response.content) - float(response.headers["x-duration-s"])) < 0.002


async def test_form_fields_work_like_json(espeak, tmp_path):
    response = await espeak.post("/tts", data={"text": SHORT, "speed": "1.5"}, headers={"Accept": "audio/wav"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"text": ""}, "validation_error"),
        ({"text": "  \n "}, "empty_text"),
        ({"text": "a" * 20_001}, "text_too_long"),
        ({"text": "hi", "speed": 2.5}, "validation_error"),
        ({"text": "hi", "speed": 0.4}, "validation_error"),
        ({"text": "hi", "format": "ogg"}, "validation_error"),
        ({"text": "hi", "pitch": 3}, "validation_error"),
        ({}, "validation_error"),
    ],
)
async def test_bad_requests_are_422_with_a_code(espeak, body, code):
    response = await espeak.post("/tts", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


async def test_limit_follows_the_setting(espeak_settings):
    from tts_helpers import serve

    espeak_settings.tts_max_chars = 50
    async with serve(espeak_settings) as client:
        assert (await client.post("/tts", json={"text": "a" * 51})).status_code == 422
        assert (await client.post("/tts", json={"text": "Fifty is fine.", "format": "wav"}, headers={"Accept": "audio/wav"})).status_code == 200


async def test_not_json_is_422(espeak):
    response = await espeak.post("/tts", content=b"text=hi", headers={"content-type": "text/plain"})
    assert response.status_code == 422


async def test_reference_audio_is_refused_with_a_clear_code(espeak):
    response = await espeak.post("/tts", data={"text": SHORT}, files={"reference_audio": ("me.wav", b"RIFF....WAVE")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "voice_cloning_unsupported"


async def test_text_of_only_symbols_is_422_no_speech(espeak):
    response = await espeak.post("/tts", json={"text": "...\n\n?"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_speech"


async def test_long_text_many_sentences(espeak, tmp_path):
    text = " ".join(f"This is sentence number {i}." for i in range(40))
    meta = (await synthesize(espeak, tmp_path, text=text, speed=2.0)).metadata
    assert len(meta.sentences) == 40
    assert [c[2] for c in parse_srt(meta.srt)] == [s.text for s in meta.sentences]


async def test_missing_binary_is_unhealthy_and_503(tmp_path):
    from tts_helpers import serve
    from model_servers.tts.settings import TtsSettings

    async with serve(TtsSettings(tts_engine="espeak", espeak_binary=str(tmp_path / "no-espeak"))) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "unhealthy" and "espeak-ng" in health["message"]
        for response in (
            await client.post("/tts", json={"text": "hi"}), await client.get("/voices"), await client.get("/ready")
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "model_unavailable"


async def test_ready_unknown_routes_and_wrong_methods_answer_in_the_error_shape(espeak):
    ready = await espeak.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    unknown = await espeak.post("/synthesize", json={"text": "hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong = await espeak.get("/tts")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_out_of_memory_is_a_retryable_500_with_its_own_code(espeak_settings):
    engine = OutOfMemoryEngine(espeak_settings)
    with LiveServer(create_app(espeak_settings, engine=engine)) as server:
        response = httpx.post(server.url + "/tts", json={"text": SHORT}, trust_env=False)
        assert response.status_code == 500, response.text
        assert response.json()["error"]["code"] == "out_of_memory"
        assert "Unable to allocate" in response.json()["error"]["message"]
        # Not an outage: the server stays ready for the next request.
        assert httpx.get(server.url + "/ready", trust_env=False).status_code == 200
    assert engine.calls == 1
