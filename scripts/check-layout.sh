#!/bin/sh
# The include rules of docs/design.md ("Folders and who may include whom"), checked: every
# `#include "..."` of the project's C sources and headers, by the folder of the file that
# includes and the folder of the file included. Prints each violation and exits 1 if any.
# Usage: sh scripts/check-layout.sh   (from the repository root)
set -u

zone() {
    case "$1" in
        engine/model/*) echo model ;;
        engine/text/*) echo text ;;
        engine/ref/*) echo ref ;;
        engine/vulkan/*) echo vulkan ;;
        engine/experts/*) echo experts ;;
        engine/*/*) echo engine-unknown ;;
        engine/*) echo engine ;;
        common/*|board/*|update/*|tools/*|firmware/*|tests/*|shaders/*) echo "${1%%/*}" ;;
        *) echo other ;;
    esac
}

# allowed FROM TO FILE: 0 when a file in zone FROM may include FILE (in zone TO)
allowed() {
    from=$1 to=$2 file=$3
    [ "$from" = "$to" ] && return 0
    [ "$to" = common ] && return 0
    case "$from:$to" in
        tests:*) return 0 ;;
        engine:model|engine:text|engine:ref|engine:vulkan|engine:experts|engine:shaders) return 0 ;;
        model:shaders) return 0 ;;                        # the i-quant grids, shared with GLSL
        text:model) return 0 ;;                           # the tokenizer reads the GGUF vocabulary
        experts:model) return 0 ;;
        ref:model|ref:experts|ref:engine) return 0 ;;     # engine root: the backend table, session plan/state
        vulkan:model|vulkan:experts|vulkan:engine|vulkan:shaders) return 0 ;;
        vulkan:ref) [ "$file" = engine/ref/ref_ops.h ] && return 0 ;;  # one rope frequency table for both backends
        experts:engine) [ "$file" = engine/engine.h ] && return 0 ;;
        tools:model) return 0 ;;                          # model-file tools write GGUF and quantize
        tools:engine) [ "$file" = engine/engine.h ] && return 0 ;;
        tools:update) return 0 ;;                         # the bundle tools sign and inspect bundles
        firmware:engine) [ "$file" = engine/engine.h ] && return 0 ;;   # the one door
        firmware:board|firmware:update|firmware:tools) return 0 ;;
        update:board) return 0 ;;
    esac
    return 1
}

bad=0 n=0
files=$( (git ls-files -co --exclude-standard -- '*.c' '*.h' 2>/dev/null || find common engine board update tools firmware tests shaders -name '*.[ch]') | sort -u)
for f in $files; do
    [ -f "$f" ] || continue
    from=$(zone "$f")
    [ "$from" = other ] && continue
    for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
        case "$inc" in */*) ;; *) continue ;; esac     # same-folder includes (shaders' .glsl)
        n=$((n + 1))
        to=$(zone "$inc")
        if [ "$to" = engine-unknown ] || [ "$from" = engine-unknown ] || ! allowed "$from" "$to" "$inc"; then
            echo "check-layout: $f ($from) includes $inc ($to): not allowed by docs/design.md" >&2
            bad=$((bad + 1))
        fi
    done
done
echo "check-layout: $n includes checked, $bad not allowed"
[ "$bad" -eq 0 ]
