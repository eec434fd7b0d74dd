#!/bin/sh
# `make gpu-check`: the Vulkan backend's checks on a real GPU, in one run sized for a
# machine lent for minutes. In order, each step skipped once GPU_CHECK_SECONDS (540) have
# passed, each result written to OUTDIR as soon as it exists:
#
#   board.json      `flashbox board`; stops here unless the picked device is a GPU
#                   (GPU_CHECK_ALLOW_CPU=1 lets lavapipe through, to try the script)
#   tests.log       the whole test suite on that device (the same tests CI runs on lavapipe)
#   bench-small.txt bench on the small model of #3 (made here, about 30 s): 64- and
#                   256-token prompts, 32 decoded tokens, per-kernel times (--kernels)
#   bench-wide.txt  bench on a 4-layer model with V4-Flash's own widths (d 4096, 64 heads
#                   of 512, q and o ranks 1024 in 8 groups, experts of 2048 with 6 used,
#                   the 129280-token head; made here, about 90 s): where decode meets the
#                   bandwidth bound, since the small model's 45 MB a token is dispatch-bound
#                   on any GPU; then the same with routed experts paged through 400 MiB
#   summary.txt     the tests' last line and every bench's JSON line
#
#   sh scripts/gpu-check.sh [OUTDIR (gpu-check)]
#
# Binaries: FLASHBOX and FLASHBOX_TEST (build/...), or GPU_PACK=DIR for a folder made by
# scripts/gpu-pack.sh (its bin/, lib/ and fixtures/ are used). Models are kept in
# GPU_CHECK_DIR (/tmp/flashbox-gpu-check) so a rerun on the same machine skips making
# them. GPU_CHECK_DEVICE=N passes --device N to board and bench.
set -u
out=${1:-gpu-check}
budget=${GPU_CHECK_SECONDS:-540}
work=${GPU_CHECK_DIR:-${TMPDIR:-/tmp}/flashbox-gpu-check}
if [ -n "${GPU_PACK:-}" ]; then
    bin=$GPU_PACK/bin/flashbox
    testbin=$GPU_PACK/bin/flashbox-test
    export LD_LIBRARY_PATH="$GPU_PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export FLASHBOX_FIXTURES="${FLASHBOX_FIXTURES:-$GPU_PACK/fixtures}"
else
    bin=${FLASHBOX:-build/flashbox}
    testbin=${FLASHBOX_TEST:-build/flashbox-test}
fi
# NVIDIA's driver installed outside the loader's search path (containers, read-only
# driver mounts): name its manifest, under both the current and the older variable
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
        export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
    fi
done
dev=""
[ -n "${GPU_CHECK_DEVICE:-}" ] && dev="--device $GPU_CHECK_DEVICE"
mkdir -p "$out" "$work"
start=$(date +%s)
status=0

# step NAME: true while there is time left for NAME, printing the elapsed seconds
step() {
    now=$(($(date +%s) - start))
    if [ "$now" -ge "$budget" ]; then
        echo "gpu-check: $now s of $budget gone; skipping $1"
        return 1
    fi
    echo "gpu-check: [$now s] $1"
}
# left: the seconds left, at least 10 (a step's own timeout)
left() { l=$((budget - ($(date +%s) - start))); [ "$l" -lt 10 ] && l=10; echo "$l"; }

# mkmodel_once FILE ARGS...: makes FILE unless an earlier run left it complete
mkmodel_once() {
    f=$1
    shift
    [ -f "$f" ] && return 0
    t0=$(date +%s)
    if timeout "$(left)" "$bin" mkmodel --out "$f.part" "$@" >/dev/null && mv "$f.part" "$f"; then
        echo "gpu-check: made $f in $(($(date +%s) - t0)) s"
        return 0
    fi
    echo "gpu-check: making $f failed or ran out of time"
    rm -f "$f.part"
    status=1
    return 1
}

# bench FILE ARGS...: one bench, its output appended to FILE
bench() {
    f=$1
    shift
    echo "\$ flashbox bench $*" >>"$f"
    # shellcheck disable=SC2086
    timeout "$(left)" "$bin" bench $dev --backend vulkan "$@" >>"$f" 2>&1 || {
        echo "gpu-check: bench $* failed (exit $?)" | tee -a "$f"
        status=1
    }
    echo >>"$f"
}

step board || exit 1
# shellcheck disable=SC2086
if ! "$bin" board $dev >"$out/board.json" 2>"$out/board.err"; then
    cat "$out/board.err"
    exit 1
fi
rm -f "$out/board.err"
# the picked device's "type" and "name" from board.json (one key per line, as board prints)
picked() {
    awk -F'"' -v key="$1" '/"index":/ { split($3, a, /[:,]/); i = a[2] + 0 } $2 == key { v[i] = $4 }
                           /"picked":/ { split($3, a, /[:,]/); p = a[2] + 0 } END { print v[p] }' "$out/board.json"
}
picked_type=$(picked type)
picked_name=$(picked name)
echo "gpu-check: picked $picked_name ($picked_type)"
if [ "$picked_type" = cpu ] && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    echo "gpu-check: the picked device is a CPU driver; no GPU to check (board.json lists what was found)" >&2
    exit 1
fi

if step tests; then
    FLASHBOX=$bin timeout "$(left)" "$testbin" >"$out/tests.log" 2>&1 || status=1
    # the runner's last line is its totals; without them it was stopped at the budget
    grep -q ' passed, ' "$out/tests.log" || echo "no totals: the test run was stopped at the time budget (GPU_CHECK_SECONDS=$budget)" >>"$out/tests.log"
    tail -n 1 "$out/tests.log"
fi

small=$work/small.gguf
if step "small model" && mkmodel_once "$small" --dim 1024 --layers 8 --ratios 0,0,4,128,4,128,4,128 \
        --heads 8 --head-dim 512 --rope-dim 64 --q-lora 256 --o-groups 2 --o-lora 256 --window 128 \
        --index-heads 8 --index-dim 128 --index-topk 64 --experts 64 --experts-used 6 --ff 512 \
        --vocab 4096 --hash-layers 3 --quant mixed --name small; then
    : >"$out/bench-small.txt"
    step "bench small 64" && bench "$out/bench-small.txt" -m "$small" --prompt 64 --gen 32 --runs 3 --kernels
    step "bench small 256" && bench "$out/bench-small.txt" -m "$small" --prompt 256 --gen 32 --runs 2
fi

wide=$work/wide.gguf
if step "wide model" && mkmodel_once "$wide" --dim 4096 --layers 4 --ratios 4,128 --heads 64 \
        --head-dim 512 --rope-dim 64 --q-lora 1024 --o-groups 8 --o-lora 1024 --window 128 \
        --index-heads 64 --index-dim 128 --index-topk 512 --experts 8 --experts-used 6 --ff 2048 \
        --vocab 129280 --hash-layers 1 --quant mixed --name wide; then
    : >"$out/bench-wide.txt"
    step "bench wide" && bench "$out/bench-wide.txt" -m "$wide" --prompt 64 --gen 32 --runs 3 --kernels
    step "bench wide paged" && bench "$out/bench-wide.txt" -m "$wide" --prompt 64 --gen 32 --expert-cache-mb 400
fi

{
    echo "device: $picked_name ($picked_type)"
    [ -f "$out/tests.log" ] && echo "tests: $(tail -n 1 "$out/tests.log")"
    for f in "$out"/bench-*.txt; do
        [ -f "$f" ] && grep -h '^{"model"' "$f"
    done
    echo "elapsed: $(($(date +%s) - start)) s"
} >"$out/summary.txt"
cat "$out/summary.txt"
exit "$status"
