#!/bin/sh
# Installs the official openai and @anthropic-ai/sdk npm clients, at the versions pinned in
# tests/e2e/package-lock.json, into build/npm for the end-to-end client tests
# (tests/test_serve_clients.c). Needs node and npm (scripts/deps.sh installs Debian's) and
# the npm registry; without them it says so and the tests skip.
set -eu
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "npm-clients: node or npm missing: the client tests will be skipped" >&2
    exit 0
fi
mkdir -p build/npm
cp tests/e2e/package.json tests/e2e/package-lock.json build/npm/
cd build/npm
if ! npm ci --no-audit --no-fund --loglevel=error; then
    echo "npm-clients: npm ci failed (no registry?): the client tests will be skipped" >&2
    rm -rf node_modules
fi
