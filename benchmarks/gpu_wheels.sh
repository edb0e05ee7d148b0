#!/usr/bin/env bash
# Run HERE (not on the GPU machine), before a device run: downloads the wheels gpu_models.sh's train_speed step
# needs and the GPU machine lacks (datasets and its two missing dependencies; the rest of its needs are there),
# for that machine's Python 3.12, into gpu-wheels/ (ignored). Carry it: run(carry=["gpu-data", "gpu-wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
mkdir -p gpu-wheels
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d gpu-wheels datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -la gpu-wheels
