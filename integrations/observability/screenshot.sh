#!/usr/bin/env bash
# Screenshot a Phoenix page (e.g. a trace) with headless Chromium (Debian: apt-get install -y chromium).
#   integrations/observability/screenshot.sh URL [OUT.png]
set -euo pipefail
URL="$1"
OUT="${2:-docs/img/trace.png}"
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$PROFILE" --hide-scrollbars \
  --virtual-time-budget="${VIRTUAL_TIME_MS:-20000}" --window-size="${WINDOW_SIZE:-1400,900}" \
  --screenshot="$OUT" "$URL"
echo "wrote $OUT"
