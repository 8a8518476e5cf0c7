import numpy as np

from model_servers.tts.audio import PEAK_CEILING, normalize_loudness, trim_silence


def tone(amplitude, seconds=1.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def voiced_rms_db(x):
    return 20 * np.log10(np.sqrt(np.mean(x**2)))


def test_quiet_and_loud_sentences_come_out_at_the_same_level():
    quiet, loud = normalize_loudness(tone(0.01), 16000, -20), normalize_loudness(tone(0.9), 16000, -20)
    assert abs(voiced_rms_db(quiet) - (-20)) < 0.5
    assert abs(voiced_rms_db(loud) - (-20)) < 0.5


def test_pauses_do_not_count_towards_loudness():
    speech = tone(0.1, 0.5)
    with_pause = np.concatenate([speech, np.zeros(16000, np.float32), speech])
    a = normalize_loudness(speech, 16000, -20)
    b = normalize_loudness(with_pause, 16000, -20)
    assert abs(np.max(np.abs(a)) - np.max(np.abs(b))) < 0.01


def test_peaks_are_capped():
    spiky = tone(0.01)
    spiky[100] = 1.0
    out = normalize_loudness(spiky, 16000, -3)
    assert np.max(np.abs(out)) <= PEAK_CEILING + 1e-6


def test_silence_stays_silent_and_trims_to_nothing():
    silent = np.zeros(1000, np.float32)
    assert not normalize_loudness(silent, 16000, -20).any()
    assert trim_silence(silent, 16000).size == 0


def test_trim_keeps_a_margin_around_the_sound():
    x = np.concatenate([np.zeros(8000), tone(0.5, 0.5), np.zeros(8000)]).astype(np.float32)
    y = trim_silence(x, 16000, keep_s=0.03)
    assert 8000 <= y.size <= 8000 + 2 * 480 + 2
