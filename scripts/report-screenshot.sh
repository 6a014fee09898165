#!/usr/bin/env bash
# Render an `evac report` page in headless Chromium and save a screenshot, to look at the page
# the way a person does (charts drawn, axes and labels readable) on a machine without a display.
#
#   scripts/report-screenshot.sh REPORT.html OUT.png [WIDTH [HEIGHT]]
#
# WIDTH defaults to 1100 pixels and HEIGHT to 4200 (tall enough for the whole page of a report
# with every section; the rest of the window stays white). Chromium is found as `chromium`,
# `chromium-browser` or `google-chrome` (or $CHROMIUM). This script installs nothing: when
# Chromium is missing it says which package to install (Debian and Ubuntu: `chromium`).
# The page fetches nothing, and Chromium runs with networking disabled anyway.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH [HEIGHT]]" >&2
    exit 2
fi
report=$1
out=$2
width=${3:-1100}
height=${4:-4200}

if [ ! -f "$report" ]; then
    echo "report-screenshot: $report: no such file (write one with: evac report --journal J --out $report)" >&2
    exit 1
fi
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null; then
            browser=$b
            break
        fi
    done
fi
if [ -z "$browser" ]; then
    echo "report-screenshot: needs Chromium, which is not installed (Debian/Ubuntu: apt-get install chromium; or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
fi

abs_report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

# --no-sandbox: Chromium refuses to run as root with its sandbox (operators run evac as root);
# the page is our own and has no script. A profile of its own so that a running browser is
# not reused.
sandbox=()
[ "$(id -u)" = 0 ] && sandbox=(--no-sandbox)
"$browser" --headless --disable-gpu "${sandbox[@]}" --user-data-dir="$profile" \
    --hide-scrollbars --force-device-scale-factor=1 --no-first-run \
    --proxy-server="127.0.0.1:9" --proxy-bypass-list="<-loopback>" \
    --window-size="$width,$height" --screenshot="$abs_out" "file://$abs_report" \
    >"$profile/chromium.log" 2>&1 || {
    echo "report-screenshot: $browser failed:" >&2
    cat "$profile/chromium.log" >&2
    exit 1
}
if [ ! -s "$abs_out" ]; then
    echo "report-screenshot: $browser wrote no screenshot:" >&2
    cat "$profile/chromium.log" >&2
    exit 1
fi
echo "report-screenshot: $out ($width×$height)"
