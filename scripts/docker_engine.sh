#!/usr/bin/env bash
# Prepare a local Docker engine and the locally built base image the CPU images use.
# Idempotent: every step is skipped when its result is already there.
#
#   scripts/docker_engine.sh            # engine + local/debian:bookworm
#
# Steps (docs: platform-notes.md, "A real Docker engine"):
#   1. install Debian's docker.io and debootstrap when dockerd is missing (root only),
#      and Debian's docker-compose (1.29.2, v1: validates docker-compose.yaml in CI) when
#      it is missing (root only; otherwise a note, the compose test says what to do);
#   2. start dockerd (overlay2) when `docker info` fails, wait up to 60 s;
#   3. build local/debian:bookworm with debootstrap (minbase) when the image is
#      missing, carrying the host's apt sources and CA bundle so that apt and pip
#      work inside containers behind the host's TLS proxy.
# Environment: SIMIA_BASE_IMAGE (default local/debian:bookworm),
#              DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
start=$SECONDS
log() { echo "[docker_engine $((SECONDS - start))s] $*" >&2; }
base_image=${SIMIA_BASE_IMAGE:-local/debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "docker_engine: dockerd/debootstrap missing and not root; install docker.io and debootstrap" >&2
        exit 1
    fi
    log "installing docker.io and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/tmp/docker_engine_apt.log 2>&1
    apt-get install -y -q --no-install-recommends docker.io debootstrap \
        >>/tmp/docker_engine_apt.log 2>&1 || { tail -30 /tmp/docker_engine_apt.log >&2; exit 1; }
fi

if ! command -v docker-compose >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "docker_engine: docker-compose missing and not root; install Debian's docker-compose" >&2
    else
        log "installing docker-compose"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends docker-compose \
            >>/tmp/docker_engine_apt.log 2>&1 || {
            apt-get update -q >>/tmp/docker_engine_apt.log 2>&1
            apt-get install -y -q --no-install-recommends docker-compose \
                >>/tmp/docker_engine_apt.log 2>&1; } || {
            tail -30 /tmp/docker_engine_apt.log >&2; exit 1; }
    fi
fi

if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    setsid nohup dockerd --storage-driver=overlay2 >/tmp/dockerd.log 2>&1 </dev/null &
    if ! timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.5; done'; then
        echo "docker_engine: dockerd did not come up in 60 s; last log lines:" >&2
        tail -20 /tmp/dockerd.log >&2
        exit 1
    fi
fi

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    rootfs=$(mktemp -d /tmp/simia-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm into $rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/tmp/debootstrap.log 2>&1 || {
        tail -20 /tmp/debootstrap.log >&2; exit 1; }
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    fi
    mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    log "importing $base_image"
    tar -C "$rootfs" -c . | docker import - "$base_image" >/dev/null
fi
log "ready: $(docker version --format '{{.Server.Version}}') with $base_image"
