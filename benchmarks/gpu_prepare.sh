#!/usr/bin/env bash
# Run HERE (with network), before a GPU session: downloads the wheels the GPU machine lacks
# into .whl/ (git-ignored), for Python 3.12. The GPU image already has torch 2.11, triton 3.6,
# huggingface_hub >= 1.32, safetensors, numpy, Pillow, regex, requests, filelock.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
dl() { python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
       --platform any -d .whl "$@"; }
dl diffusers==0.42.1 importlib_metadata zipp
dl sageattention==1.0.6 || echo "sageattention 1.0.6 wheel not available: its benchmark rows will say so"
ls -la .whl
