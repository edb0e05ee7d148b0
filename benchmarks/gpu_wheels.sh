#!/usr/bin/env bash
# Run HERE (not on the GPU machine), before a device run: downloads the wheels gpu_models.sh's train_speed step
# needs and the GPU machine lacks (datasets and its two missing dependencies; the rest of its needs are there),
# for that machine's Python 3.12, into gpu-wheels/ (ignored); and fills gpu-data/ (ignored) with the SQuAD texts
# the device runs have used (all 97,867 questions, the first 4,000 paragraphs) from SQUAD_SOURCE, where that
# folder exists. Carry both: run(carry=["gpu-data", "gpu-wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
mkdir -p gpu-wheels
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d gpu-wheels datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -la gpu-wheels
SQUAD_SOURCE=${SQUAD_SOURCE:-../shared/data/corpus/squad-v1.1}
if [ -f "$SQUAD_SOURCE/questions.txt" ] && [ -f "$SQUAD_SOURCE/paragraphs.jsonl" ]; then
  mkdir -p gpu-data
  cp "$SQUAD_SOURCE/questions.txt" gpu-data/questions.txt
  head -n 4000 "$SQUAD_SOURCE/paragraphs.jsonl" > gpu-data/paragraphs.jsonl
  wc -l gpu-data/questions.txt gpu-data/paragraphs.jsonl
else
  echo "no $SQUAD_SOURCE/questions.txt and paragraphs.jsonl: gpu-data/ not filled (the benchmarks then use data/squad)"
fi
