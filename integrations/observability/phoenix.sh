#!/usr/bin/env bash
# Arize Phoenix for CI and local use, in its own virtual environment (never the project's).
#
#   integrations/observability/phoenix.sh install   # venv at $IG_VENVS/phoenix (pinned version; reused if present)
#   integrations/observability/phoenix.sh start     # background server on 127.0.0.1:$PHOENIX_PORT, waits until ready
#   integrations/observability/phoenix.sh stop      # terminates it (and removes its temporary data)
#   integrations/observability/phoenix.sh url       # prints the base URL (OTLP/HTTP: <url>/v1/traces)
#
# Offline: usage telemetry is off, data lives in a temporary working directory.
set -euo pipefail
# shellcheck source=../service.sh
. "$(dirname "$0")/../service.sh"

PHOENIX_VERSION="${PHOENIX_VERSION:-20.26.1}"
IG_VENVS="${IG_VENVS:-$HOME/.cache/ig_middleware/venvs}"
VENV="$IG_VENVS/phoenix"
PORT="${PHOENIX_PORT:-6006}"
GRPC_PORT="${PHOENIX_GRPC_PORT:-4317}"
STATE="${IG_PHOENIX_STATE:-${TMPDIR:-/tmp}/ig-phoenix-$PORT}"
URL="http://127.0.0.1:$PORT"

ready() { curl -sf -o /dev/null "$URL/v1/projects"; }

case "${1:-}" in
  install)
    have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("arize-phoenix"))' 2>/dev/null || true)"
    if [ -x "$VENV/bin/phoenix" ] && [ "$have" = "$PHOENIX_VERSION" ]; then
      echo "phoenix $PHOENIX_VERSION already in $VENV"
      exit 0
    fi
    python -m venv "$VENV"
    "$VENV/bin/pip" install -q "arize-phoenix==$PHOENIX_VERSION" 2> >(grep -v "^WARNING: Location" >&2)
    echo "phoenix $PHOENIX_VERSION installed in $VENV"
    ;;
  start)
    [ -x "$VENV/bin/phoenix" ] || { echo "phoenix not installed: $0 install" >&2; exit 1; }
    if ready; then echo "phoenix already answers on $URL" >&2; exit 1; fi
    work="$(mktemp -d -t ig-phoenix-data-XXXXXX)"
    mkdir -p "$STATE" && echo "$work" >"$STATE/workdir"
    PHOENIX_HOST=127.0.0.1 PHOENIX_PORT="$PORT" PHOENIX_GRPC_PORT="$GRPC_PORT" PHOENIX_WORKING_DIR="$work" \
      PHOENIX_TELEMETRY_ENABLED=false DO_NOT_TRACK=1 \
      service_spawn "$STATE" "$STATE/phoenix.log" "$VENV/bin/phoenix" serve
    service_wait "phoenix on $URL" "$STATE" "$STATE/phoenix.log" "${PHOENIX_STARTUP_TIMEOUT:-180}"
    ;;
  stop)
    service_stop phoenix "$STATE"
    if [ -f "$STATE/workdir" ]; then rm -rf "$(cat "$STATE/workdir")" "$STATE/workdir"; fi
    ;;
  url)
    echo "$URL"
    ;;
  *)
    echo "usage: $0 install|start|stop|url" >&2
    exit 2
    ;;
esac
