#!/usr/bin/env bash
# Installs Azurite (npm package `azurite`), the local Azure Blob/ADLS server of the object-storage
# tests (bronze_assets_tests/azurite.py), into a cache folder outside the work tree. Called by
# `make test`. Without node/npm it installs nothing and says so; the ADLS tests then skip with the
# same instruction.
set -euo pipefail
VERSION=3.35.0  # 3.36+ declare node >= 21; Debian's nodejs is 20
PREFIX="${XDG_CACHE_HOME:-$HOME/.cache}/bronze_assets/azurite"
if [ -x "$PREFIX/node_modules/.bin/azurite-blob" ] \
   && grep -q "\"version\": \"$VERSION\"" "$PREFIX/node_modules/azurite/package.json" 2>/dev/null; then
    exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "install-azurite: node and npm are missing; run: sudo apt-get install -y nodejs npm &&" \
         "bash scripts/install-azurite.sh — the ADLS tests are skipped until then" >&2
    exit 0
fi
echo "install-azurite: npm install azurite@$VERSION into $PREFIX" >&2
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >/dev/null
