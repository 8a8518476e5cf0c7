"""``python -m model_servers.flux`` / ``taskfleet model-server flux``: serve the Flux model with uvicorn."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from model_servers.flux.app import create_app
    from model_servers.flux.settings import FluxSettings

    settings = FluxSettings()
    parser = argparse.ArgumentParser(prog="taskfleet model-server flux", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
