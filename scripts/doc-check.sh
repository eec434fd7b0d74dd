#!/bin/sh
# Runs the command blocks of README.md and docs/*.md that are marked runnable: a line
# `<!-- runnable -->` right before a ```sh fence. Each block runs with `sh -e` in its own
# scratch directory, with the flashbox under test first on PATH as `flashbox`, in its own
# process group (killed when the block ends or after DOC_BLOCK_SECONDS, default 120, so a
# daemon a block started never outlives it). Prints one line per block; exits 1 if any fails.
# Usage: sh scripts/doc-check.sh [FLASHBOX]
set -eu
cd "$(dirname "$0")/.."
bin=${1:-${FLASHBOX:-build/flashbox}}
[ -x "$bin" ] || { echo "doc-check: no flashbox at $bin" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
limit=${DOC_BLOCK_SECONDS:-120}
work=$(mktemp -d /tmp/fbdoc.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
ln -s "$bin" "$work/bin/flashbox"

# Split the marked blocks into files named after their source and line.
for doc in README.md docs/*.md; do
    awk -v doc="$doc" -v out="$work" '
        /^<!-- runnable -->$/ { marked = NR; next }
        marked && NR == marked + 1 && /^```sh$/ {
            name = doc ":" NR; gsub(/[\/:.]/, "_", name); f = out "/" name ".sh"; inblock = 1; marked = 0; next }
        { marked = 0 }
        inblock && /^```$/ { inblock = 0; close(f); next }
        inblock { print > f }
    ' "$doc"
done

passed=0 failed=0
for block in "$work"/*.sh; do
    [ -f "$block" ] || continue
    name=$(basename "$block" .sh)
    dir="$work/run-$name"
    mkdir "$dir"
    # exec setsid: the background job is not a group leader, so setsid makes it one in place
    # and $pid names the block's whole process group.
    (cd "$dir" && PATH="$work/bin:$PATH" exec setsid sh -e "$block" >"$dir.log" 2>&1) &
    pid=$!
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$((limit * 10))" ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "timed out after ${limit}s" >>"$dir.log"
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true
    rc=0
    wait "$pid" || rc=$?
    if grep -q '^timed out after' "$dir.log"; then rc=124; fi
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1)); echo "ok   $name"
    else
        failed=$((failed + 1)); echo "FAIL $name (exit $rc); its output:"; sed 's/^/    /' "$dir.log" | tail -n 30
    fi
done
echo "doc-check: $passed blocks passed, $failed failed"
[ "$passed" -gt 0 ] && [ "$failed" = 0 ]
