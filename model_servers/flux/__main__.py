"""``python -m model_servers.flux`` / ``taskfleet model-server flux``: serve the Flux model with uvicorn."""

from __future__ import annotations

import argparse
import logging

from taskfleet.settings_check import exit_on_bad_settings, warn_unknown_names

PROG = "taskfleet model-server flux"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from model_servers.flux.app import create_app
    from model_servers.flux.settings import FluxSettings

    with exit_on_bad_settings(PROG):
        settings = FluxSettings()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_unknown_names("flux")
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
