#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser, driven by Playwright's Python
# package from requirements-dev.txt with executable_path=/usr/bin/chromium; Playwright's
# own browser downloads are not used). Idempotent; root only.
set -euo pipefail
start=$SECONDS
if command -v chromium >/dev/null 2>&1; then
    echo "[browser_deps] $(chromium --version 2>/dev/null | head -1) already installed" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "browser_deps: chromium is missing and this is not root; apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/tmp/browser_deps_apt.log 2>&1
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core \
    >>/tmp/browser_deps_apt.log 2>&1 || { tail -30 /tmp/browser_deps_apt.log >&2; exit 1; }
echo "[browser_deps $((SECONDS - start))s] installed $(chromium --version | head -1)" >&2
