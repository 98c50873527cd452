#!/usr/bin/env bash
# Render a `cpt-prep check --report DIR` page in headless Chromium and save a PNG screenshot, to see
# that the self-contained page renders (plots, table) without network. For developers and users;
# CI does not depend on it.
#
#   scripts/screenshot_report.sh REPORT_DIR_OR_HTML [OUT.png] [WIDTHxHEIGHT]
#
# Needs Chromium (Debian/Ubuntu: `apt-get install -y chromium`); CHROMIUM=/path/to/binary to choose one.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 REPORT_DIR_OR_HTML [OUT.png] [WIDTHxHEIGHT]" >&2
    exit 2
fi
page=$1
[ -d "$page" ] && page="$page/index.html"
if [ ! -f "$page" ]; then
    echo "error: $page not found; write it with \`cpt-prep check MANIFEST --report DIR\`" >&2
    exit 2
fi
out=${2:-$(dirname "$page")/screenshot.png}
size=${3:-1200x2400}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$browser" ]; then
    echo "error: no Chromium found; install it (apt-get install -y chromium) or set CHROMIUM=/path/to/binary" >&2
    exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_page=$(cd "$(dirname "$page")" && pwd)/$(basename "$page")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
# Network-related features off: the page must render from the file alone.
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$abs_out" --window-size="${size/x/,}" "file://$abs_page" >/dev/null 2>&1 || {
    echo "error: $browser failed to render $page" >&2
    exit 1
}
[ -s "$abs_out" ] || { echo "error: no screenshot written to $abs_out" >&2; exit 1; }
echo "$abs_out"
