"""Standalone HTTP inference servers (face swap, Flux, TTS); each one's heavy dependencies are an extra."""
