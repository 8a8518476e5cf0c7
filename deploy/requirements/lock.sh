#!/usr/bin/env bash
# Regenerates the images' lock files from pyproject.toml, one per image and accelerator, for the
# images' platform (CPython 3.11, Debian bookworm on x86-64: glibc 2.36), with hashes.
# The Dockerfile installs from them with --require-hashes. Run after changing a dependency:
#   deploy/requirements/lock.sh                  (needs uv: pip install uv; and PyPI)
#   deploy/requirements/lock.sh --upgrade        (also move every pin to the newest allowed)
set -euo pipefail
cd "$(dirname "$0")/../.."
uv=${UV:-uv}
dir=deploy/requirements
compile() {
  local out=$1
  shift
  "$uv" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
    --custom-compile-command "$dir/lock.sh" pyproject.toml "$dir/build.in" "$@" "${extra_args[@]}" -o "$dir/$out"
}
extra_args=("$@")
compile fleet.txt --extra storage
compile face-swap-cpu.txt --extra face_swap
compile face-swap-cuda.txt --extra face_swap "$dir/onnxruntime-cuda.in" --no-emit-package onnxruntime
# PyPI's Linux torch is the CUDA build (CUDA libraries as wheels); it runs on a CPU too.
compile flux.txt --extra flux
compile tts.txt --extra tts
