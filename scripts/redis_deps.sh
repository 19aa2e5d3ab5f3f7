#!/usr/bin/env bash
# Debian's redis-server for the Celery tests (tests/celery: the broker of a real
# CeleryExecutor run, started by the test itself on a free loopback port; the package's
# own service is not used). Idempotent; root only.
set -euo pipefail
start=$SECONDS
if command -v redis-server >/dev/null 2>&1; then
    echo "[redis_deps] $(redis-server --version | head -1) already installed" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "redis_deps: redis-server is missing and this is not root; apt-get install redis-server" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/tmp/redis_deps_apt.log 2>&1
apt-get install -y -q --no-install-recommends redis-server \
    >>/tmp/redis_deps_apt.log 2>&1 || { tail -30 /tmp/redis_deps_apt.log >&2; exit 1; }
# Debian's package starts its own instance where an init system runs; the tests do not
# need it (they start theirs on a free port), so it is stopped when it runs
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
fi
echo "[redis_deps $((SECONDS - start))s] installed $(redis-server --version | head -1)" >&2
