#!/bin/sh
# `make run`: make the default model if absent, start `flashbox serve` on a local Unix
# socket (./run/demo.sock), send one chat request with curl over that socket, print the
# answer, then stop the daemon with SIGTERM (it finishes in-flight work, flushes the audit
# log and exits 0). The daemon's own log and audit lines go to run/demo.log.
set -eu
bin=${1:-build/flashbox}
model=models/default.gguf
sock=run/demo.sock
log=run/demo.log
mkdir -p models run
[ -f "$model" ] || "$bin" mkmodel --out "$model"

"$bin" serve -m "$model" --socket "$sock" --set server.slots=2 >"$log" 2>&1 &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; }
trap stop EXIT INT TERM

# Ready when /health answers 200 (the model loads in the background; 503 until then).
sh "$(dirname "$0")/wait-ready.sh" "$sock" "$pid" "$log" 10
echo "daemon ready on $sock: $(curl -s --unix-socket "$sock" http://localhost/health)"

request='{"messages":[{"role":"user","content":"Hello! Who are you?"}],"max_tokens":24,"temperature":0}'
echo "request:  POST /v1/chat/completions $request"
response=$(curl -s --unix-socket "$sock" -H 'Content-Type: application/json' -d "$request" \
    http://localhost/v1/chat/completions)
echo "response: $response"
# The answer text alone, still JSON-escaped (the default model has random weights: expect
# noise, deterministically). sed, not a JSON tool: a fresh Debian 12 has neither python nor jq.
answer=$(printf '%s' "$response" | sed -n 's/.*"content":"\(\([^"\\]\|\\.\)*\)".*/\1/p')
if [ -z "$answer" ] && ! printf '%s' "$response" | grep -q '"content":""'; then
    echo "no answer in the response; the daemon's log:" >&2
    cat "$log" >&2
    exit 1
fi
echo "answer:   \"$answer\""

trap - EXIT INT TERM
kill -TERM "$pid"
wait "$pid"
echo "daemon stopped (exit $?); log and audit lines in $log"
