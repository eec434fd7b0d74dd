#!/bin/sh
# `make run`: make the default model if absent, show its summary and the logits of a short
# prompt. (Replaced by the daemon demo once `flashbox serve` lands.)
set -eu
bin=${1:-build/flashbox}
model=models/default.gguf
mkdir -p models
[ -f "$model" ] || "$bin" mkmodel --out "$model"
"$bin" inspect -m "$model" | tail -n 3
echo "top-3 logits of tokens 0,5,6,7:"
"$bin" logits -m "$model" --tokens 0,5,6,7 --top 3
