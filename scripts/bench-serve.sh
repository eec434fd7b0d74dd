#!/bin/sh
# Daemon throughput and latency on a model (default: the tiny default model): starts
# `flashbox serve` on run/bench.sock, sends N chat requests with C concurrent curl clients,
# prints requests/s and generated tokens/s, and the daemon's own time-to-first-token and
# per-token latency means from /metrics. Usage: sh scripts/bench-serve.sh [BIN] [N] [C] [MAX_TOKENS] [SLOTS]
set -eu
bin=${1:-build/flashbox}
n=${2:-64}
c=${3:-8}
max=${4:-16}
slots=${5:-4}
model=${MODEL:-models/default.gguf}
sock=run/bench.sock
mkdir -p run models
[ -f "$model" ] || "$bin" mkmodel --out "$model" >/dev/null
"$bin" serve -m "$model" --socket "$sock" --set server.slots="$slots" --set server.queue_depth=1024 \
    --set audit.log=run/bench.audit >run/bench.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
sh "$(dirname "$0")/wait-ready.sh" "$sock" "$pid" run/bench.log 60
body="{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":$max,\"ignore_eos\":true,\"seed\":1}"
t0=$(date +%s.%N)
seq "$n" | xargs -P "$c" -I{} curl -s -o /dev/null --unix-socket "$sock" -d "$body" http://localhost/v1/chat/completions
t1=$(date +%s.%N)
m=$(curl -s --unix-socket "$sock" http://localhost/metrics)
get() { printf '%s\n' "$m" | awk -v k="$1" '$1 == k { print $2 }'; }
echo "$n requests, $c clients, max_tokens $max, $slots slots, $(nproc) CPUs, model $model"
awk -v n="$n" -v t0="$t0" -v t1="$t1" -v tok="$(get flashbox_completion_tokens_total)" \
    -v ts="$(get flashbox_time_to_first_token_seconds_sum)" -v tc="$(get flashbox_time_to_first_token_seconds_count)" \
    -v ls="$(get flashbox_token_latency_seconds_sum)" -v lc="$(get flashbox_token_latency_seconds_count)" \
    'BEGIN { d = t1 - t0; printf "wall %.2f s: %.1f requests/s, %.1f generated tokens/s\n", d, n / d, tok / d;
             printf "time to first token (mean, queue included): %.1f ms; per-token latency (mean): %.2f ms\n",
                    1000 * ts / tc, 1000 * ls / lc }'
