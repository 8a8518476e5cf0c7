"""``python -m model_servers.tts`` / ``taskfleet model-server tts``: run the TTS server with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from model_servers.tts.app import create_app
from model_servers.tts.settings import TtsSettings


def main(argv: list[str] | None = None) -> None:
    settings = TtsSettings()
    parser = argparse.ArgumentParser(prog="taskfleet model-server tts", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
