#!/usr/bin/env bash
# The browser of the web pages' tests (tests/web/browser): Debian's chromium, driven by Playwright
# for Python (the test extra) through its executable_path, so no browser is ever downloaded.
# Idempotent: installs the package only when no chromium is on the machine.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
echo "browser.sh: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
