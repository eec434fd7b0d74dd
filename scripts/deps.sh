#!/bin/sh
# Installs the Debian 12 packages flashbox builds and tests with (design.md, Dependencies).
# Run as root; `apt-get update` runs once, only when something is missing.
# With --check it only reports what is missing (exit 1 if anything is).
set -eu
PACKAGES="build-essential pkg-config clang llvm curl ca-certificates
libssl-dev openssl libjansson-dev libpcre2-dev libmicrohttpd-dev libsystemd-dev
libdrm-dev liburing-dev libvulkan-dev vulkan-tools glslang-tools spirv-tools
mesa-vulkan-drivers util-linux"

# node and npm run the official client libraries in the end-to-end tests; a machine that
# already has them as commands (another packaging of Node) is left as it is.
NODE_PACKAGES="nodejs npm"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
for p in $NODE_PACKAGES; do
    cmd=$p
    [ "$p" = nodejs ] && cmd=node
    if ! command -v "$cmd" >/dev/null 2>&1 && ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing packages:$missing" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "flashbox: missing Debian packages:$missing" >&2
    echo "install them as root:  apt-get update && apt-get install -y$missing" >&2
    exit 1
fi
echo "flashbox: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
