"""``python -m model_servers.flux`` / ``taskfleet model-server flux``: serve the Flux model with uvicorn."""

from __future__ import annotations

import argparse

from taskfleet.logs import setup_logging
from taskfleet.settings_check import exit_on_bad_settings, warn_unknown_names

PROG = "taskfleet model-server flux"


def main(argv: list[str] | None = None) -> None:
    from model_servers.base import serve
    from model_servers.flux.app import create_app
    from model_servers.flux.settings import FluxSettings

    with exit_on_bad_settings(PROG):
        settings = FluxSettings()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    setup_logging(settings.log_level, settings.log_format)
    warn_unknown_names("flux")
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    serve(create_app(settings), settings, args.host, args.port)


if __name__ == "__main__":
    main()
