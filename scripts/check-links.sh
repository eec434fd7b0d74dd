#!/bin/sh
# The documents' links resolve: every relative link in README.md, docs/*.md and the engine
# sub-folders' READMEs names a file that exists, and an #anchor names a heading of that file
# (GitHub's rule: lower case, punctuation dropped, spaces to hyphens).
# Usage: sh scripts/check-links.sh   (from the repository root)
set -u

slugs() {   # the anchors of a markdown file's headings, one per line
    sed -n 's/^#\{1,6\}[[:space:]]\{1,\}//p' "$1" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9 _-]//g; s/ /-/g'
}

bad=0 n=0
for doc in README.md docs/*.md engine/*/README.md; do
    [ -f "$doc" ] || continue
    dir=$(dirname "$doc")
    # every ](target) on a line, outside code spans is good enough for these pages
    for target in $(grep -o '](\([^)# ]*\)\(#[^) ]*\)\{0,1\})' "$doc" | sed 's/^](//; s/)$//'); do
        case "$target" in http://*|https://*|mailto:*) continue ;; esac
        n=$((n + 1))
        path=${target%%#*}
        anchor=
        case "$target" in *'#'*) anchor=${target#*#} ;; esac
        if [ -z "$path" ]; then file=$doc; else file="$dir/$path"; fi
        if [ ! -e "$file" ]; then
            echo "check-links: $doc: $target: no such file ($file)" >&2; bad=$((bad + 1)); continue
        fi
        if [ -n "$anchor" ] && ! slugs "$file" | grep -qx -- "$anchor"; then
            echo "check-links: $doc: $target: no heading with that anchor in $file" >&2; bad=$((bad + 1))
        fi
    done
done
echo "check-links: $n links checked, $bad broken"
[ "$bad" -eq 0 ]
