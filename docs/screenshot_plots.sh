#!/usr/bin/env bash
# Render `dvc plots show` in headless Chromium and save docs/plots.png (the README's picture).
#
# The page DVC writes loads Vega from a CDN; to work offline this script installs the same
# Vega versions from npm and points the page at them. Needs: node/npm and Debian's chromium.
# Run from the repository root after `make repro`.
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

.venv/bin/dvc plots show -o "$out/page" >/dev/null
( cd "$out" && npm install --silent --no-audit --no-fund --legacy-peer-deps \
    vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null 2>&1 )
for lib in vega vega-lite vega-embed; do
  cp "$out/node_modules/$lib/build/$lib.min.js" "$out/page/$lib.js"
done
sed -i -E 's#https://cdn.jsdelivr.net/npm/(vega(-lite|-embed)?)@[0-9.]+#\1.js#' "$out/page/index.html"

chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$out/profile" --hide-scrollbars --window-size=1400,2000 \
  --virtual-time-budget=5000 --screenshot="$PWD/docs/plots.png" "file://$out/page/index.html" \
  2>/dev/null
echo "wrote docs/plots.png"
