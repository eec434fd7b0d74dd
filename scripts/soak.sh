#!/bin/bash
# `make soak SOAK_SECONDS=N` (not part of `make test`): N seconds of mixed load on the tiny
# model through the daemon's Unix sockets, with a hot reload (an install of a second
# signed bundle through the admin socket) half-way, while the daemon's resident memory,
# open descriptors and threads are sampled from /proc every 2 s.
#
# Load, three bounded clients at a time: streaming completions; streams cut off by the
# client after 0.3 s (cancellations); malformed requests (expect 400) interleaved with
# admin status calls (expect 200). Every answer's HTTP status is recorded.
#
# Fails (exit 1) if any request gets a 5xx (no fault is injected here), if the daemon
# dies, or if RSS, descriptors or threads keep growing: the last third of the samples is
# compared with the first third after a warm-up (RSS: more than 25% + 16 MiB up; fds or
# threads: more than 8 up). Prints the figures either way. Scratch files: SOAK_DIR
# (default a fresh /tmp/flashbox-soak.XXXXXX, removed on success).
set -eu
bin=${1:-build/flashbox}
secs=${SOAK_SECONDS:-120}
dir=${SOAK_DIR:-$(mktemp -d /tmp/flashbox-soak.XXXXXX)}
mkdir -p "$dir/run"
sock=$dir/run/api.sock
adm=$dir/run/adm.sock
log=$dir/daemon.log
codes=$dir/codes
samples=$dir/samples
: >"$codes"
: >"$samples"

# Two distinguishable tiny models in signed bundles; A installed before the daemon starts.
"$bin" keygen --out "$dir/keys" >/dev/null
"$bin" mkmodel --out "$dir/a.gguf" --name soak-A --seed 42 >/dev/null
"$bin" mkmodel --out "$dir/b.gguf" --name soak-B --seed 7 >/dev/null
for m in a b; do
    "$bin" bundle create --key "$dir/keys/private.key" --product soak --version "1.$m" --epoch 1 \
        --model "$dir/$m.gguf" --chunk-size 64K --prompt 0,17 --selftest-tokens 2 --out "$dir/$m.fbx" >/dev/null
done
"$bin" update install "$dir/a.fbx" --data-dir "$dir/data" --keys "$dir/keys" --product soak >/dev/null

"$bin" serve --socket "$sock" --set update.data_dir="$dir/data" --set update.keys_dir="$dir/keys" \
    --set update.product=soak --set server.admin_socket="$adm" --set server.slots=2 \
    --set update.reload_grace_s=60 --set audit.log="$dir/audit.jsonl" >"$log" 2>&1 &
pid=$!
workers=""
cleanup() {
    for w in $workers; do kill "$w" 2>/dev/null || true; done
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

sh "$(dirname "$0")/wait-ready.sh" "$sock" "$pid" "$log" 60

# One request; appends "LABEL STATUS SECONDS" to the codes file (000: curl got no answer).
req() {
    local label=$1 s=$2 method=$3 path=$4 body=${5:-} extra=${6:-}
    local code
    if [ -n "$body" ]; then
        code=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' $extra --unix-socket "$s" -X "$method" \
            -H 'Content-Type: application/json' --data-binary "$body" "http://localhost$path" || true)
    else
        code=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' $extra --unix-socket "$s" -X "$method" "http://localhost$path" || true)
    fi
    echo "$label ${code:-000 0}" >>"$codes"
}

end=$((SECONDS + secs))
stream='{"prompt":"tell me more","max_tokens":48,"temperature":0.7,"stream":true}'
long='{"prompt":"go on and on","max_tokens":2000,"ignore_eos":true,"stream":true}'
chat='{"messages":[{"role":"user","content":"hi"}],"max_tokens":16,"temperature":0}'
( while [ $SECONDS -lt $end ]; do
      req stream "$sock" POST /v1/completions "$stream" "--max-time 60"
      req chat "$sock" POST /v1/chat/completions "$chat" "--max-time 60"
  done ) &
workers="$workers $!"
( while [ $SECONDS -lt $end ]; do
      req cancel "$sock" POST /v1/completions "$long" "--max-time 0.3"
  done ) &
workers="$workers $!"
( while [ $SECONDS -lt $end ]; do
      req bad_json "$sock" POST /v1/completions '{"prompt": "x", "max_tokens": ' "--max-time 30"
      req bad_field "$sock" POST /v1/completions '{"prompt": 7}' "--max-time 30"
      req no_route "$sock" GET /v1/nothing "" "--max-time 30"
      req admin_status "$adm" GET /admin/update/status "" "--max-time 30"
      sleep 0.1
  done ) &
workers="$workers $!"

reloaded=0
half=$((SECONDS + secs / 2))
while [ $SECONDS -lt $end ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "soak: the daemon died; its log:" >&2
        tail -50 "$log" >&2
        exit 1
    fi
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    thr=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    echo "$SECONDS $rss $fds $thr" >>"$samples"
    if [ $reloaded = 0 ] && [ $SECONDS -ge $half ]; then
        reloaded=1
        req hot_reload "$adm" POST /admin/update/install "{\"bundle\":\"$dir/b.fbx\"}" "--max-time 300" &
        workers="$workers $!"
    fi
    sleep 2
done
wait $workers 2>/dev/null || true
workers=""

fail=0
served=$(curl -s --unix-socket "$sock" http://localhost/health || true)
case $served in *soak-B*) ;; *) echo "soak: after the hot reload /health does not name soak-B: $served" >&2; fail=1 ;; esac

echo "soak: $secs s, requests by kind and HTTP status (000 = the client gave up first):"
awk '{ print $1, $2 }' "$codes" | sort | uniq -c | sed 's/^/  /'
echo "soak: latency of the answered requests (whole request, client side), p50 / p90 / p99 / max in s:"
for k in stream chat admin_status; do
    awk -v k="$k" '$1 == k && $2 == "200" { print $3 }' "$codes" | sort -g | awk -v k="$k" '
        { v[NR] = $1 }
        END { if (NR) printf "  %-13s n=%-6d %.3f / %.3f / %.3f / %.3f\n", k, NR,
                             v[int(NR * 0.50 + 0.5) > 0 ? int(NR * 0.50 + 0.5) : 1],
                             v[int(NR * 0.90 + 0.5) > 0 ? int(NR * 0.90 + 0.5) : 1],
                             v[int(NR * 0.99 + 0.5) > 0 ? int(NR * 0.99 + 0.5) : 1], v[NR] }'
done
n5=$(awk '$2 ~ /^5/' "$codes" | wc -l)
if [ "$n5" -gt 0 ]; then
    echo "soak: FAIL: $n5 answers with a 5xx status" >&2
    fail=1
fi
bad=$(awk '($1 == "bad_json" || $1 == "bad_field") && $2 != "400"' "$codes" | wc -l)
[ "$bad" -eq 0 ] || { echo "soak: FAIL: $bad malformed requests not answered 400" >&2; fail=1; }
hr=$(awk '$1 == "hot_reload" { print $2 }' "$codes")
[ "$hr" = 200 ] || { echo "soak: FAIL: the hot reload answered '$hr', expected 200" >&2; fail=1; }

# Growth: first third after a warm-up (the first 10% of samples) against the last third.
awk -v fail_out="$dir/growth" '
    { t[NR] = $1; rss[NR] = $2; fds[NR] = $3; thr[NR] = $4 }
    END {
        n = NR; if (n < 6) { print "soak: too few samples (" n ")"; exit 0 }
        w = int(n / 10); a0 = w + 1; a1 = w + int((n - w) / 3); b0 = n - int((n - w) / 3) + 1
        for (i = a0; i <= a1; i++) { ra += rss[i]; fa += fds[i]; ta += thr[i]; na++ }
        for (i = b0; i <= n; i++) { rb += rss[i]; fb += fds[i]; tb += thr[i]; nb++ }
        ra /= na; fa /= na; ta /= na; rb /= nb; fb /= nb; tb /= nb
        maxr = 0; for (i = 1; i <= n; i++) if (rss[i] > maxr) maxr = rss[i]
        printf "soak: %d samples; RSS %.1f -> %.1f MiB (max %.1f), fds %.1f -> %.1f, threads %.1f -> %.1f\n",
               n, ra / 1024, rb / 1024, maxr / 1024, fa, fb, ta, tb
        g = 0
        if (rb > ra * 1.25 + 16384) { print "soak: FAIL: resident memory keeps growing"; g = 1 }
        if (fb > fa + 8) { print "soak: FAIL: open descriptors keep growing"; g = 1 }
        if (tb > ta + 8) { print "soak: FAIL: threads keep growing"; g = 1 }
        if (g) print "growth" > fail_out
    }' "$samples"
[ ! -f "$dir/growth" ] || fail=1

trap - EXIT INT TERM
kill -TERM "$pid"
if ! wait "$pid"; then
    echo "soak: FAIL: the daemon did not exit 0 after SIGTERM; its log:" >&2
    tail -20 "$log" >&2
    fail=1
fi
if [ $fail = 0 ]; then
    echo "soak: PASS"
    [ -n "${SOAK_DIR:-}" ] || rm -rf "$dir"
else
    echo "soak: scratch files kept in $dir" >&2
fi
exit $fail
