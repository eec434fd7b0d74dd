#!/bin/sh
# Regenerates the generated parts of the documents from the program itself, so they cannot
# drift from it: today the configuration reference in docs/operating.md, from
# `flashbox serve --print-config`. With --check it changes nothing and exits 1 (printing a
# diff) when a document is out of date. Usage: sh scripts/gen-docs.sh [--check] [FLASHBOX]
set -eu
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
bin=${1:-${FLASHBOX:-build/flashbox}}
doc=docs/operating.md
tmp=$(mktemp)
cfg=$(mktemp)
trap 'rm -f "$tmp" "$cfg"' EXIT
"$bin" serve --print-config >"$cfg"
awk -v cfg="$cfg" '
    /^<!-- generated: print-config -->$/ {
        print; print ""; print "```ini"
        while ((getline line < cfg) > 0) print line
        print "```"; print ""; skip = 1; next
    }
    /^<!-- end generated -->$/ { skip = 0 }
    !skip { print }
' "$doc" >"$tmp"
if ! grep -q '^<!-- generated: print-config -->$' "$doc"; then
    echo "gen-docs: $doc has no '<!-- generated: print-config -->' marker" >&2
    exit 1
fi
if [ "$check" = 1 ]; then
    if ! cmp -s "$doc" "$tmp"; then
        echo "gen-docs: $doc is out of date with '$bin serve --print-config'; run sh scripts/gen-docs.sh" >&2
        diff "$doc" "$tmp" >&2 || true
        exit 1
    fi
    exit 0
fi
cat "$tmp" >"$doc"
