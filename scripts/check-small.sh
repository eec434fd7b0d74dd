#!/bin/sh
# `make check-small`: on the small model (made once into $SMALL_DIR if absent, about a
# minute), decode logits with experts paged at 1x, 2x and 4x the minimum expert budget
# must be bitwise identical to every expert resident: Vulkan over $VK_TOKENS tokens (300)
# and the CPU reference over $REF_TOKENS (100; it is the slower check per budget). Not in
# `make test`: the model is 500 MB and the runs take minutes.
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
[ "$fail" = 0 ] && echo "check-small: passed" || echo "check-small: FAILED"
exit "$fail"
