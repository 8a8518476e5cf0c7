"""TTS model server: text to speech with sentence timings and SRT subtitles.

Engines (``TASKFLEET_TTS_ENGINE``): ``espeak`` (default; the espeak-ng binary, no model files) and
``piper`` (neural ONNX voices ``NAME.onnx`` + ``NAME.onnx.json`` in ``TASKFLEET_VOICES_DIR``; CUDA
when ONNX Runtime has it). Neither clones voices: a request with reference audio gets
``422 voice_cloning_unsupported``. Missing voices or binary: the server starts, ``/health`` says
``unhealthy`` with the reason, and ``/tts`` and ``/voices`` answer ``503 model_unavailable``.

``POST /tts`` takes JSON ``{"text", "language"?, "voice"?, "speed"? (0.5-2.0), "format"? ("wav" |
"mp3")}``, or the same as form fields with an optional ``reference_audio`` file. Text is split by
sentence, each sentence synthesized in order, trimmed, levelled to the same loudness, and joined
with a pause. Empty text, text over ``TASKFLEET_TTS_MAX_CHARS``, an unknown voice or a bad field
-> ``422`` with a code.

The response is ``multipart/form-data`` with two parts, in order:

- ``metadata`` (``application/json``): ``engine``, ``voice``, ``language``, ``format``,
  ``content_type``, ``sample_rate``, ``duration_s``, ``size_bytes``, ``sentences`` (``[{"index",
  "text", "start_s", "end_s"}]``, the speech of each sentence) and ``srt`` (subtitles whose cues
  tile the audio from 0 to ``duration_s``);
- ``audio`` (``audio/wav`` 16-bit mono, or ``audio/mpeg``), streamed from disk.

The app is ``model_servers.tts.app.create_app(settings)``. The wire format is
``taskfleet.workflows.tts_wire``, shared with the consumer, whose ``read_tts_response`` parses the
response as it streams (the audio part straight to a file). A caller that wants only the sound
sends ``Accept: audio/wav`` (or any ``audio/*``) and gets the audio alone, with ``X-Duration-S``
and ``X-Sample-Rate`` headers.

``GET /voices``: ``{"engine", "default_voice", "voices": [{"name", "language", "sample_rate",
"engine", "clones_voice", "speakers"}]}``.

``GET /ready``: 200 ``{"status": "ready"}`` once the engine is loaded, else 503 (for readiness
probes). A synthesis that cannot allocate answers ``500 out_of_memory``, retryable: the consumer
counts the attempt, so the task's ``max_attempts`` bounds it. Every error, unknown routes (404) and
wrong methods (405) included, is ``{"error": {"code", "message"}}``.
"""
