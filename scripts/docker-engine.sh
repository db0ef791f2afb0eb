#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, for the image check (scripts/check-image.sh).
# When none does and we are root on Debian: installs Debian's docker.io and mmdebstrap packages if
# missing, then starts dockerd in the background (log: /tmp/fluxo-dockerd.log). Does nothing when
# `docker info` already works. Exits 1 with one line when it cannot help.
set -euo pipefail
die() { echo "docker-engine.sh: error: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 && exit 0
if ! command -v dockerd >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || die "no Docker engine and not root: install docker.io and mmdebstrap, start dockerd"
  command -v apt-get >/dev/null 2>&1 || die "no Docker engine and no apt-get: install Docker and mmdebstrap"
  echo "docker-engine.sh: installing docker.io and mmdebstrap (Debian packages)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io mmdebstrap >/tmp/fluxo-apt.log 2>&1 ||
    { apt-get update -q >>/tmp/fluxo-apt.log 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io mmdebstrap >>/tmp/fluxo-apt.log 2>&1; } ||
    die "apt-get install docker.io mmdebstrap failed (log: /tmp/fluxo-apt.log)"
fi
[[ $(id -u) == 0 ]] || die "dockerd is installed but not running, and starting it needs root"
echo "docker-engine.sh: starting dockerd (log: /tmp/fluxo-dockerd.log)" >&2
nohup dockerd >/tmp/fluxo-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
die "dockerd did not answer within 30 s (log: /tmp/fluxo-dockerd.log)"
