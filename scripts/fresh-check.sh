#!/bin/sh
# `make fresh-check`: the README's two set-up commands, exactly as written there, in a fresh
# Debian 12 root that has nothing but what `debootstrap --variant=minbase` gives (no make, no
# compiler, no pkg-config). It fails if either command fails, if `make run` prints no
# "answer:" line, or if the test run does not end with "N passed, 0 failed".
#
# Root only (debootstrap, chroot, mounts). The root is made from Debian's own archive once and
# cached as a tarball (FRESH_CACHE, default /var/cache/flashbox-fresh); each run unpacks a
# new copy, so nothing a previous run installed is there. The commands run in a private mount
# namespace (unshare), so the /proc, /sys and /dev mounts vanish with it. The project is the
# checkout's tracked and untracked-but-not-ignored files (what a clone plus local edits
# holds); the shared fixtures are bind-mounted read-only at ../shared/fixtures beside it,
# where the tests look by default. Logs: FRESH_LOG_DIR (default build/fresh-check/).
set -eu
cd "$(dirname "$0")/.."
project=$(pwd)

if [ "$(id -u)" != 0 ]; then
    echo "fresh-check: needs root (debootstrap, chroot and mounts)" >&2
    exit 1
fi
cache=${FRESH_CACHE:-/var/cache/flashbox-fresh}
logs=${FRESH_LOG_DIR:-$project/build/fresh-check}
fixtures=${FLASHBOX_FIXTURES:-../shared/fixtures}
suite=bookworm
tarball=$cache/debian12-$suite-minbase.tar

mkdir -p "$cache" "$logs"
logs=$(cd "$logs" && pwd)
if [ ! -d "$fixtures" ]; then
    echo "fresh-check: no fixtures at $fixtures (set FLASHBOX_FIXTURES)" >&2
    exit 1
fi
fixtures=$(cd "$fixtures" && pwd)

step() { echo "fresh-check: $(date -u +%H:%M:%S) $*"; }

# The README's commands: the indented lines of the code block under "## Set-up".
readme_cmds=$(awk '/^## Set-up/ { on = 1; next } /^## / { on = 0 } on && /^    [^ ]/ { sub(/^    /, ""); print }' README.md)
n_cmds=$(printf '%s\n' "$readme_cmds" | grep -c .)
if [ "$n_cmds" != 2 ]; then
    echo "fresh-check: expected the README's Set-up block to hold two commands, found $n_cmds:" >&2
    printf '%s\n' "$readme_cmds" >&2
    exit 1
fi
run_cmd=$(printf '%s\n' "$readme_cmds" | sed -n 1p)
test_cmd=$(printf '%s\n' "$readme_cmds" | sed -n 2p)
case "$run_cmd" in *"make run"*) ;; *) echo "fresh-check: first README command is not the run: $run_cmd" >&2; exit 1 ;; esac
case "$test_cmd" in *"make test"*) ;; *) echo "fresh-check: second README command is not the tests: $test_cmd" >&2; exit 1 ;; esac

if ! command -v debootstrap >/dev/null 2>&1; then
    step "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$logs/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends debootstrap >>"$logs/apt.log" 2>&1
fi

work=$(mktemp -d /var/tmp/flashbox-fresh.XXXXXX)
root=$work/root
cleanup() {
    # The mounts live in the unshared namespace only; refuse to delete if any leaked here.
    if grep -q " $work/" /proc/mounts; then
        echo "fresh-check: mounts left under $work; not removing it" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT INT TERM

if [ ! -f "$tarball" ]; then
    step "making a Debian 12 ($suite) minbase root with debootstrap (about a minute)"
    debootstrap --variant=minbase "$suite" "$work/boot" >"$logs/debootstrap.log" 2>&1 || {
        echo "fresh-check: debootstrap failed; see $logs/debootstrap.log" >&2; exit 1; }
    tar -C "$work/boot" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$work/boot"
fi
step "unpacking a fresh root from $tarball"
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

step "copying the project (tracked and unignored files) to /src/flashbox"
mkdir -p "$root/src/flashbox" "$root/src/shared/fixtures"
if command -v git >/dev/null 2>&1 && git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -cf - | tar -C "$root/src/flashbox" -xf -
else
    tar --exclude=./build --exclude=./build-san --exclude=./run --exclude=./models -cf - . |
        tar -C "$root/src/flashbox" -xf -
fi

# Inside the namespace: mounts, then each README command in a clean environment, as root.
cat >"$work/inside.sh" <<'EOF'
set -eu
root=$1 fixtures=$2 logs=$3 run_cmd=$4 test_cmd=$5
mount --make-rprivate /
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount --bind "$fixtures" "$root/src/shared/fixtures"
mount -o remount,bind,ro "$root/src/shared/fixtures"
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 CI="${CI:-}" /bin/sh -c "cd /src/flashbox && $1"
}
echo "fresh-check: $(date -u +%H:%M:%S) running: $run_cmd"
in_root "$run_cmd" >"$logs/run.log" 2>&1 || { echo "fresh-check: the run command failed; last lines of $logs/run.log:"; tail -n 30 "$logs/run.log"; exit 1; }
grep '^answer:' "$logs/run.log" || { echo "fresh-check: make run printed no answer; see $logs/run.log"; tail -n 30 "$logs/run.log"; exit 1; }
echo "fresh-check: $(date -u +%H:%M:%S) running: $test_cmd"
in_root "$test_cmd" >"$logs/test.log" 2>&1 || { echo "fresh-check: the test command failed; last lines of $logs/test.log:"; tail -n 30 "$logs/test.log"; exit 1; }
last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$logs/test.log" | tail -n 1)
echo "fresh-check: tests: $last"
case "$last" in *" passed, 0 failed"*) ;; *) echo "fresh-check: the tests did not all pass; see $logs/test.log"; exit 1 ;; esac
EOF
unshare --mount --fork sh "$work/inside.sh" "$root" "$fixtures" "$logs" "$run_cmd" "$test_cmd"
step "passed: both README commands work on a fresh Debian 12 root"
