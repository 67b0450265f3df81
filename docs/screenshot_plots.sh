#!/usr/bin/env bash
# Screenshot the page `dvc plots show` writes, in headless Chromium, into OUT.png:
#
#     docs/screenshot_plots.sh OUT.png       # after `make repro`; docs/plots.png is the README's
#
# The page draws offline (make installs Vega into it, .dvc/plots/). Needs Debian's chromium.
set -euo pipefail
target="${1:?usage: docs/screenshot_plots.sh OUT.png}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/dvc plots show -o "$work/page" >/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --hide-scrollbars --window-size=1400,2000 \
  --virtual-time-budget=5000 --screenshot="$(realpath "$target")" "file://$work/page/index.html" \
  2>/dev/null
echo "wrote $target"
