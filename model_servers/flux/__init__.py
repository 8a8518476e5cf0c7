"""The Flux text-to-image server (diffusers FluxPipeline, FLUX.1-schnell or -dev, LoRAs)."""

from model_servers.flux.app import create_app
from model_servers.flux.settings import FluxSettings

__all__ = ["create_app", "FluxSettings"]
