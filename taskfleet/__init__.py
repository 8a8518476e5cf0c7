"""taskfleet: shared pieces of the fleet (errors, workflow definitions, the HTTP client, URL safety, CLI)."""

__version__ = "0.1.0"
