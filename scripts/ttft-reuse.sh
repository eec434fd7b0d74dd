#!/bin/sh
# Time to first token of a chat's second turn over a long document, through the daemon,
# with and without prefix reuse (docs/long-context.md, "Prefix reuse"). Starts `flashbox
# serve` twice on the tiny model with a 32K context (reference backend unless BACKEND says):
#   without reuse (cache.mem_mb=0): sends the second turn's whole conversation;
#   with reuse (cache.mem_mb=256): sends the first turn (document + question; the daemon saves
#   the state at the end of its prompt), then the second turn, which resumes from there.
# A turn asks for one token, so its wall time is its time to first token; the daemon's own
# figure (flashbox_time_to_first_token_seconds) and the tokens it reused are printed beside it.
# The assistant's reply in the second turn is fixed text: what follows the saved prefix does
# not change what is reused. Usage: sh scripts/ttft-reuse.sh [BIN] [WORDS]
# (2,780 words of the generated document: about 16,300 prompt tokens on the tiny model and on
# the small one). MODEL=FILE takes another model (it needs a context of about 17K or more:
# make the small one with `make check-small`'s mkmodel line and --ctx 32768).
set -eu
bin=${1:-build/flashbox}
words=${2:-2780}
backend=${BACKEND:-ref}
dir=run/ttft
model=${MODEL:-$dir/tiny32k.gguf}
sock=$dir/api.sock
mkdir -p "$dir"
[ -f "$model" ] || [ -n "${MODEL:-}" ] || "$bin" mkmodel --out "$model" --ctx 32768 >/dev/null
# a contract-like document of `words` words from a fixed list, a sentence every 13
doc=$(awk -v n="$words" 'BEGIN { split("contract clause party shall agreement term notice payment section liability " \
    "warranty schedule annex delivery goods services price invoice dispute court", w, " ");
    for (i = 0; i < n; i++) printf "%s%s", w[(i * 7) % 20 + 1], (i % 13 == 12 ? ". " : " ") }')
user1="Read this contract: $doc What does it say about payment?"
turn1="{\"messages\":[{\"role\":\"user\",\"content\":\"$user1\"}],\"max_tokens\":1,\"seed\":1}"
turn2="{\"messages\":[{\"role\":\"user\",\"content\":\"$user1\"},{\"role\":\"assistant\",\"content\":\"Payment is due on invoice.\"},\
{\"role\":\"user\",\"content\":\"And what about liability?\"}],\"max_tokens\":1,\"seed\":1}"
printf '%s' "$turn1" >"$dir/turn1.json"
printf '%s' "$turn2" >"$dir/turn2.json"

metric() { curl -s --unix-socket "$sock" http://localhost/metrics | awk -v k="$1" '$1 == k { print $2 }'; }
# send FILE: prints "wall_s daemon_ttft_s prompt_tokens tokens_reused" of one request
send() {
    s0=$(metric flashbox_time_to_first_token_seconds_sum)
    r0=$(metric flashbox_prefix_tokens_reused_total)
    wall=$(curl -s -o "$dir/out.json" -w '%{time_total}' --unix-socket "$sock" -d @"$1" http://localhost/v1/chat/completions)
    s1=$(metric flashbox_time_to_first_token_seconds_sum)
    r1=$(metric flashbox_prefix_tokens_reused_total)
    pt=$(grep -o '"prompt_tokens":[0-9]*' "$dir/out.json" | cut -d: -f2)
    [ -n "$pt" ] || { echo "request failed: $(cat "$dir/out.json")" >&2; exit 1; }
    awk -v w="$wall" -v s0="${s0:-0}" -v s1="${s1:-0}" -v p="$pt" -v r0="${r0:-0}" -v r1="${r1:-0}" \
        'BEGIN { printf "%.2f %.2f %d %d\n", w, s1 - s0, p, r1 - r0 }'
}
pid=
stop() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; pid=; fi; }
trap stop EXIT
start() {
    "$bin" serve -m "$model" --socket "$sock" --set model.backend="$backend" --set cache.mem_mb="$1" \
        --set server.request_deadline_s=3600 >"$dir/serve.log" 2>&1 &
    pid=$!
    sh "$(dirname "$0")/wait-ready.sh" "$sock" "$pid" "$dir/serve.log" 120
}

start 0
set -- $(send "$dir/turn2.json")
echo "without reuse: second turn, $3 prompt tokens: TTFT $1 s (daemon $2 s), $4 tokens reused"
stop
start 256
set -- $(send "$dir/turn1.json")
echo "with reuse: first turn, $3 prompt tokens: $1 s (daemon $2 s)"
set -- $(send "$dir/turn2.json")
echo "with reuse: second turn, $3 prompt tokens: TTFT $1 s (daemon $2 s), $4 tokens reused"
stop
echo "model $model, backend $backend, $(nproc) CPUs, $(date -u +%Y-%m-%d)"
