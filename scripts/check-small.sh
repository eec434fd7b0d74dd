#!/bin/sh
# `make check-small`: on the small model (made once into $SMALL_DIR if absent, about a
# minute), decode logits with experts paged at 1x, 2x and 4x the minimum expert budget
# must be bitwise identical to every expert resident: Vulkan over $VK_TOKENS tokens (300)
# and the CPU reference over $REF_TOKENS (100; it is the slower check per budget). Then
# Vulkan's batched prefill of the $VK_TOKENS tokens (the model's real shapes through the
# prefill kernels, batches of 256 and the rest) must match the reference's: the same top-1
# and a relative error under 1e-3 at every position. Not in `make test`: the model is
# 500 MB and the runs take minutes.
#
# The minimum budget is experts-used slots per layer: 6 experts x 8 layers x 816 KiB (one
# expert's gate, up and down in the mixed format) = 38.25 MiB, so 39, 77 and 153 MiB.
set -eu
bin=${1:-build/flashbox}
dir=${SMALL_DIR:-${TMPDIR:-/tmp}/flashbox-check-small}
model=${SMALL_MODEL:-$dir/small.gguf}
vk_tokens=${VK_TOKENS:-300}
ref_tokens=${REF_TOKENS:-100}
mkdir -p "$dir"
if [ ! -f "$model" ]; then
    echo "check-small: making $model"
    "$bin" mkmodel --out "$model.part" --dim 1024 --layers 8 --ratios 0,0,4,128,4,128,4,128 --heads 8 \
        --head-dim 512 --rope-dim 64 --q-lora 256 --o-groups 2 --o-lora 256 --window 128 --index-heads 8 \
        --index-dim 128 --index-topk 64 --experts 64 --experts-used 6 --ff 512 --vocab 4096 --hash-layers 3 \
        --quant mixed
    mv "$model.part" "$model"
fi

# the worst per-position relative error of logits file $1 against $2 (float32 [n][4096])
# and the number of positions whose top-1 differs, as "ERROR MISSES"
compare_logits() {
    od -An -v -tf4 -w16384 "$1" > "$1.txt"
    od -An -v -tf4 -w16384 "$2" > "$2.txt"
    paste -d'|' "$1.txt" "$2.txt" |
        awk -F'|' '{ n = split($1, a, " "); split($2, b, " "); num = 0; den = 0; ia = 1; ib = 1
                     for (i = 1; i <= n; i++) { d = a[i] - b[i]; num += d * d; den += b[i] * b[i]
                                                if (a[i] > a[ia]) ia = i; if (b[i] > b[ib]) ib = i }
                     e = sqrt(num / den); if (e > worst) worst = e; if (ia != ib) miss++ }
                   END { printf "%.3g %d\n", worst, miss + 0 }'
    rm -f "$1.txt" "$2.txt"
}

# deterministic pseudo-random token ids in [0, 4096)
tokens() { awk -v n="$1" 'BEGIN { s = 7; for (i = 0; i < n; i++) { s = (s * 48271) % 2147483647;
                                   printf "%s%d", (i ? "," : ""), s % 4096 } }'; }

fail=0
for backend in vulkan ref; do
    if [ "$backend" = vulkan ]; then n=$vk_tokens; else n=$ref_tokens; fi
    toks=$(tokens "$n")
    "$bin" logits -m "$model" --backend "$backend" --incremental --tokens "$toks" --out "$dir/$backend-full.f32"
    for mb in 39 77 153; do
        "$bin" logits -m "$model" --backend "$backend" --incremental --tokens "$toks" --expert-cache-mb "$mb" \
            --out "$dir/$backend-$mb.f32"
        if cmp -s "$dir/$backend-full.f32" "$dir/$backend-$mb.f32"; then
            echo "check-small: $backend, $n tokens, $mb MiB of experts: bitwise identical to full residency"
        else
            echo "check-small: $backend, $n tokens, $mb MiB of experts: logits DIFFER from full residency"
            fail=1
        fi
        rm -f "$dir/$backend-$mb.f32"
    done
    rm -f "$dir/$backend-full.f32"
done
toks=$(tokens "$vk_tokens")
"$bin" logits -m "$model" --backend vulkan --tokens "$toks" --out "$dir/vulkan-prefill.f32"
"$bin" logits -m "$model" --backend ref --tokens "$toks" --out "$dir/ref-prefill.f32"
set -- $(compare_logits "$dir/vulkan-prefill.f32" "$dir/ref-prefill.f32")
if awk -v e="$1" -v m="$2" 'BEGIN { exit !(e < 1e-3 && m == 0) }'; then
    echo "check-small: vulkan prefill, $vk_tokens tokens: worst relative error $1 against the reference, same top-1 everywhere"
else
    echo "check-small: vulkan prefill, $vk_tokens tokens: worst relative error $1, top-1 differs at $2 positions: DIFFERS from the reference"
    fail=1
fi
rm -f "$dir/vulkan-prefill.f32" "$dir/ref-prefill.f32"
[ "$fail" = 0 ] && echo "check-small: passed" || echo "check-small: FAILED"
exit "$fail"
