"""The TTS server with engine=piper on a tiny voice built by the test, loaded by piper's own code."""

import numpy as np

from model_servers.tts.settings import TtsSettings

from tts_helpers import serve
from tts_helpers import check_srt_tiles, read_wav, synthesize
from tts_voices import SAMPLE_RATE, write_tiny_voice


async def test_voices_are_listed_from_the_directory(piper):
    health = (await piper.get("/health")).json()
    assert health["status"] == "healthy" and health["device"] == "cpu"
    assert health["models_directory"].endswith("voices")
    voices = (await piper.get("/voices")).json()
    assert voices["engine"] == "piper"
    assert [(v["name"], v["language"], v["sample_rate"]) for v in voices["voices"]] == [
        ("de_DE-tiny-low", "de_DE", SAMPLE_RATE),
        ("en_US-tiny-low", "en_US", SAMPLE_RATE),
    ]
    assert voices["default_voice"] == "de_DE-tiny-low"  # the first by name when none is configured


async def test_synthesis_runs_the_onnx_voice(piper, tmp_path):
    text = "Hello world. This is a much longer second sentence, said by a tiny voice."
    result = await synthesize(piper, tmp_path, text=text, voice="en_US-tiny-low")
    meta = result.metadata
    samples, rate = read_wav(result.audio_path)
    assert meta.engine == "piper" and meta.voice == "en_US-tiny-low" and rate == SAMPLE_RATE
    assert [s.text for s in meta.sentences] == ["Hello world.", "This is a much longer second sentence, said by a tiny voice."]
    first, second = meta.sentences
    # The tiny voice emits 50 ms per phoneme id: the second sentence has far more phonemes.
    assert (second.end_s - second.start_s) > 3 * (first.end_s - first.start_s)
    # Its tone's pitch follows the phoneme ids: the two sentences do not sound the same.
    def pitch(s):
        seg = samples[int(s.start_s * rate) : int(s.end_s * rate)]
        return np.argmax(np.abs(np.fft.rfft(seg))) * rate / seg.size
    assert abs(pitch(first) - pitch(second)) > 1.0
    check_srt_tiles(meta.srt, meta.duration_s, [s.text for s in meta.sentences])


async def test_language_picks_the_voice_and_speed_scales_length(piper, tmp_path):
    text = "Guten Tag. Wie geht es Ihnen heute?"
    normal = await synthesize(piper, tmp_path, text=text, language="de")
    fast = await synthesize(piper, tmp_path, text=text, language="de", speed=2.0)
    assert normal.metadata.voice == fast.metadata.voice == "de_DE-tiny-low"
    assert 0.45 < fast.metadata.duration_s / normal.metadata.duration_s < 0.55
    english = await synthesize(piper, tmp_path, text="Hi.", language="en-us")
    assert english.metadata.voice == "en_US-tiny-low"


async def test_unknown_voice_or_language_is_422(piper):
    for body in ({"text": "hi", "voice": "nope"}, {"text": "hi", "language": "fr"}, {"text": "hi", "voice": "en_US-tiny-low:bob"}):
        response = await piper.post("/tts", json=body)
        assert response.status_code == 422 and response.json()["error"]["code"] == "unknown_voice"


async def test_reference_audio_is_refused(piper):
    response = await piper.post("/tts", data={"text": "hi"}, files={"reference_audio": ("me.wav", b"RIFF")})
    assert response.status_code == 422 and response.json()["error"]["code"] == "voice_cloning_unsupported"


async def test_missing_voices_directory_is_unhealthy_and_503(tmp_path):
    async with serve(TtsSettings(tts_engine="piper", voices_dir=str(tmp_path / "absent"))) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "unhealthy" and not health["model_loaded"]
        assert "does not exist" in health["message"]
        response = await client.post("/tts", json={"text": "hi"})
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["error"]["code"] == "model_unavailable"
        assert (await client.get("/voices")).status_code == 503


async def test_voice_without_its_json_is_not_a_voice(tmp_path):
    voices = tmp_path / "voices"
    model = write_tiny_voice(voices, "lonely")
    model.with_name(model.name + ".json").unlink()
    async with serve(TtsSettings(tts_engine="piper", voices_dir=str(voices))) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "unhealthy"
        assert "lonely.onnx lack their .onnx.json" in health["message"]


async def test_a_broken_voice_does_not_hide_the_good_ones(tmp_path):
    voices = tmp_path / "voices"
    write_tiny_voice(voices, "good")
    (voices / "broken.onnx").write_bytes(b"not an onnx model")
    (voices / "broken.onnx.json").write_text("{}")
    async with serve(TtsSettings(tts_engine="piper", voices_dir=str(voices))) as client:
        assert (await client.get("/health")).json()["status"] == "healthy"
        assert [v["name"] for v in (await client.get("/voices")).json()["voices"]] == ["good"]


async def test_configured_default_voice_must_exist(voices_dir):
    async with serve(TtsSettings(tts_engine="piper", voices_dir=str(voices_dir), tts_default_voice="en_US-tiny-low")) as client:
        assert (await client.get("/voices")).json()["default_voice"] == "en_US-tiny-low"
    async with serve(TtsSettings(tts_engine="piper", voices_dir=str(voices_dir), tts_default_voice="nope")) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "unhealthy" and "nope" in health["message"]
