"""``python -m model_servers.face_swap`` / ``taskfleet model-server face_swap``: serve with uvicorn."""

from __future__ import annotations

import argparse

from model_servers.face_swap.settings import FaceSwapSettings
from model_servers.base import serve
from taskfleet.logs import setup_logging
from taskfleet.settings_check import exit_on_bad_settings, warn_unknown_names

PROG = "taskfleet model-server face_swap"


def main(argv: list[str] | None = None) -> None:
    with exit_on_bad_settings(PROG):
        settings = FaceSwapSettings()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--engine", choices=["insightface", "lite"], default=settings.face_swap_engine)
    parser.add_argument("--models-dir", default=settings.models_dir)
    args = parser.parse_args(argv)
    setup_logging(settings.log_level, settings.log_format)
    warn_unknown_names("face_swap")
    settings = settings.model_copy(
        update={"host": args.host, "port": args.port, "face_swap_engine": args.engine, "models_dir": args.models_dir}
    )
    from model_servers.face_swap.app import create_app

    serve(create_app(settings), settings, settings.host, settings.port)


if __name__ == "__main__":
    main()
