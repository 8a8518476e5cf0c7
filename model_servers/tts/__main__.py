"""``python -m model_servers.tts`` / ``taskfleet model-server tts``: run the TTS server with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from model_servers.tts.app import create_app
from model_servers.tts.settings import TtsSettings
from taskfleet.settings_check import exit_on_bad_settings, warn_unknown_names

PROG = "taskfleet model-server tts"


def main(argv: list[str] | None = None) -> None:
    with exit_on_bad_settings(PROG):
        settings = TtsSettings()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    warn_unknown_names("tts")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
