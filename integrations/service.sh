# Life cycle of the background servers the integration scripts start (sourced by phoenix.sh and vllm.sh).
# Each caller defines `ready` (0 when the server answers) and a state directory holding pid and log.

# service_spawn STATE LOG CMD...: start CMD as its own process group (setsid), so stop reaches its children
service_spawn() {
  local state="$1" log="$2"
  shift 2
  mkdir -p "$state"
  setsid nohup "$@" >"$log" 2>&1 &
  echo $! >"$state/pid"
}

# service_wait NAME STATE LOG TIMEOUT_S: until `ready`; fails (with the log's tail) if the process dies or times out
service_wait() {
  local name="$1" state="$2" log="$3" timeout="$4" pid
  pid="$(cat "$state/pid")"
  for _ in $(seq 1 "$timeout"); do
    if ready; then echo "$name up (pid $pid)"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; log:" >&2; tail -n 60 "$log" >&2; return 1
    fi
    sleep 1
  done
  echo "$name did not answer within ${timeout}s; log:" >&2
  tail -n 60 "$log" >&2
  return 1
}

# service_stop NAME STATE: TERM to the process group, KILL after 30 s; the log stays
service_stop() {
  local name="$1" state="$2" pid
  [ -f "$state/pid" ] || return 0
  pid="$(cat "$state/pid")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$state/pid"
  echo "$name stopped"
}
