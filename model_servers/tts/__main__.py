"""``python -m model_servers.tts`` / ``taskfleet model-server tts``: run the TTS server with uvicorn."""

from __future__ import annotations

import argparse

from model_servers.tts.app import create_app
from model_servers.tts.settings import TtsSettings
from model_servers.base import serve
from taskfleet.logs import setup_logging
from taskfleet.settings_check import exit_on_bad_settings, warn_unknown_names

PROG = "taskfleet model-server tts"


def main(argv: list[str] | None = None) -> None:
    with exit_on_bad_settings(PROG):
        settings = TtsSettings()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    setup_logging(settings.log_level, settings.log_format)
    warn_unknown_names("tts")
    serve(create_app(settings), settings, args.host, args.port)


if __name__ == "__main__":
    main()
