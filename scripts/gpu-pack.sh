#!/bin/sh
# `make gpu-pack`: gather what `scripts/gpu-check.sh` needs on a GPU machine that has a
# Vulkan driver but none of the build's packages: the two built binaries, the shared
# libraries they load (all but the C library's own, which the target's newer glibc
# provides; the Vulkan loader comes along, the driver does not) and the test fixtures.
#
#   scripts/gpu-pack.sh [DIR (gpu-pack)]   ->  DIR/bin, DIR/lib, DIR/fixtures
#
# FLASHBOX and FLASHBOX_TEST name the binaries (build/...), FLASHBOX_FIXTURES the
# fixtures (../shared/fixtures). About 40 MB. Then on the GPU machine, from the
# repository's root: GPU_PACK=DIR sh scripts/gpu-check.sh OUTDIR
set -eu
dir=${1:-gpu-pack}
bin=${FLASHBOX:-build/flashbox}
testbin=${FLASHBOX_TEST:-build/flashbox-test}
fixtures=${FLASHBOX_FIXTURES:-../shared/fixtures}
for f in "$bin" "$testbin"; do
    [ -x "$f" ] || { echo "gpu-pack: $f is not built (run make first)" >&2; exit 1; }
done
[ -d "$fixtures/model" ] || { echo "gpu-pack: no fixtures at $fixtures (set FLASHBOX_FIXTURES)" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib"
cp "$bin" "$dir/bin/flashbox"
cp "$testbin" "$dir/bin/flashbox-test"
# every library ldd resolves, except glibc's parts: mixing a copied libc with the
# target's loader breaks, and the target's glibc is newer than the build machine's
ldd "$bin" "$testbin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
    grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" "$dir/lib/"; done
cp -R "$fixtures" "$dir/fixtures"
echo "gpu-pack: $(du -sh "$dir" | cut -f1) in $dir ($(ls "$dir/lib" | wc -l) libraries)"
