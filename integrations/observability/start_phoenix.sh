#!/usr/bin/env bash
# Start a local Arize Phoenix (OTLP receiver + trace UI), offline, on localhost.
#   OTLP/HTTP: http://127.0.0.1:${PHOENIX_PORT:-6006}/v1/traces   UI: http://127.0.0.1:${PHOENIX_PORT:-6006}
# Phoenix is installed in its own virtual environment so that its many dependencies never touch the
# project's environment:  python -m venv /opt/phoenix-venv && /opt/phoenix-venv/bin/pip install arize-phoenix
# Override the location with PHOENIX_BIN=/path/to/phoenix.
set -euo pipefail
PHOENIX_BIN="${PHOENIX_BIN:-$(command -v phoenix || echo /opt/phoenix-venv/bin/phoenix)}"
if [ ! -x "$PHOENIX_BIN" ]; then
  echo "phoenix not found; install: python -m venv /opt/phoenix-venv && /opt/phoenix-venv/bin/pip install arize-phoenix" >&2
  exit 1
fi
export PHOENIX_HOST="${PHOENIX_HOST:-127.0.0.1}"
export PHOENIX_PORT="${PHOENIX_PORT:-6006}"
export PHOENIX_GRPC_PORT="${PHOENIX_GRPC_PORT:-4317}"
export PHOENIX_WORKING_DIR="${PHOENIX_WORKING_DIR:-$(mktemp -d -t phoenix-XXXXXX)}"
export PHOENIX_TELEMETRY_ENABLED=false   # no usage telemetry: the receiver stays offline
export DO_NOT_TRACK=1
exec "$PHOENIX_BIN" serve
