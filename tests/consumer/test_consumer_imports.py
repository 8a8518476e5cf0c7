"""The consumer ships without the model servers: nothing it imports may pull in ``model_servers``.

What a consumer and a server both speak (face swap's streamed multipart, TTS's response) lives in
``taskfleet.workflows``; a processor that reached into a server package instead would drag the
server's code (and, one refactor later, its ONNX or torch imports) into every consumer image.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, pkgutil, sys

import consumer
from consumer.registry import load_processors

for info in pkgutil.walk_packages(consumer.__path__, "consumer."):
    importlib.import_module(info.name)
processors = load_processors()
assert {"echo", "face_swap", "image_gen", "tts"} <= set(processors), sorted(processors)
loaded = sorted(m for m in sys.modules if m == "model_servers" or m.startswith("model_servers."))
print("model_servers modules:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_consumer_and_its_processors_import_no_model_server_module():
    # A fresh interpreter: this test process has imported model servers for other tests already.
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
