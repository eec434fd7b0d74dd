#!/bin/sh
# Waits until a `flashbox serve` started by the calling script answers GET /health with
# 200 on its API socket (the model loads in the background; /health is 503 until then).
# One readiness loop for the scripts that start a daemon (run-demo.sh, soak.sh,
# bench-serve.sh). Usage: sh scripts/wait-ready.sh SOCKET PID LOG [SECONDS]
# Exits 0 once ready; exits 1, printing the daemon's log to stderr, if PID exits first or
# SECONDS (default 60) pass.
set -eu
sock=$1
pid=$2
log=$3
secs=${4:-60}
tries=$((secs * 20))
i=0
until curl -sf --unix-socket "$sock" http://localhost/health >/dev/null 2>&1; do
    i=$((i + 1))
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "flashbox serve exited before it became ready; its log ($log):" >&2
        cat "$log" >&2
        exit 1
    fi
    if [ "$i" -gt "$tries" ]; then
        echo "flashbox serve was not ready after $secs s; its log ($log):" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.05
done
