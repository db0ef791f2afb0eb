#!/usr/bin/env bash
# Builds the container images of `invoices` and `ingest` from the Dockerfile at the repository root.
#
# Usage: scripts/image.sh [--prebuilt] [--local-base] [--tag TAG] [--repo REPO] [--push]
#   (default)     compile inside the pinned Rust image, copy into the pinned distroless image
#   --prebuilt    compile on this machine (cargo build --release, a no-op when up to date) and copy the
#                 binaries, debug info stripped, into the runtime image: one compilation serves the
#                 tests and the images. The host's glibc must not be newer than Debian 12's (2.36).
#   --local-base  for machines that cannot reach a public registry: the runtime base is a Debian 12
#                 minbase with CA certificates, made from Debian packages with mmdebstrap and imported
#                 as fluxo-local-base:bookworm (about 20 s, once). Implies --prebuilt.
#   --tag TAG     image tag (default: the commit, git describe --always --dirty)
#   --repo REPO   image repository prefix (default: fluxo), e.g.
#                 southamerica-east1-docker.pkg.dev/PROJECT/fluxo (Artifact Registry, see docs/deploy.md)
#   --push        docker push both images after building them
# Env: BUILDER_IMAGE, RUNTIME_IMAGE override the Dockerfile's pinned bases.
# Prints the two image references, one per line, last.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "image.sh: error: $*" >&2; exit 1; }
log() { echo "image.sh: $*" >&2; }

prebuilt=0 local_base=0 push=0 tag="" repo="fluxo"
while [[ $# -gt 0 ]]; do
  case "$1" in
  --prebuilt) prebuilt=1 ;;
  --local-base) local_base=1 prebuilt=1 ;;
  --push) push=1 ;;
  --tag) tag="${2:?--tag needs a value}"; shift ;;
  --repo) repo="${2:?--repo needs a value}"; shift ;;
  -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (see scripts/image.sh --help)" ;;
  esac
  shift
done
command -v docker >/dev/null 2>&1 || die "docker not found: install a Docker engine (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd, or see scripts/docker-engine.sh)"
[[ -n "$tag" ]] || tag="$(git describe --always --dirty 2>/dev/null || echo dev)"

# Without the buildx plugin the client refuses BuildKit builds; the legacy builder handles this
# Dockerfile too (the prebuilt targets come first for it).
if [[ -z "${DOCKER_BUILDKIT:-}" ]] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

args=(--build-arg "VERSION=$tag")
[[ -n "${BUILDER_IMAGE:-}" ]] && args+=(--build-arg "BUILDER_IMAGE=$BUILDER_IMAGE")
runtime="${RUNTIME_IMAGE:-}"
if [[ $local_base == 1 && -z "$runtime" ]]; then
  runtime="fluxo-local-base:bookworm"
  if ! docker image inspect "$runtime" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found (Debian: apt-get install mmdebstrap)"
    log "making $runtime from Debian packages (mmdebstrap --variant=minbase bookworm, with ca-certificates)"
    tar="$(mktemp --suffix=.tar)"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$tar"
    docker import "$tar" "$runtime" >/dev/null
    rm -f "$tar"
  fi
fi
[[ -n "$runtime" ]] && args+=(--build-arg "RUNTIME_IMAGE=$runtime")

suffix=""
if [[ $prebuilt == 1 ]]; then
  log "compiling on the host (release)"
  cargo build --release --locked -p invoices -p ingest
  mkdir -p .tmp/image/bin
  for bin in invoices ingest; do
    objcopy --strip-debug "target/release/$bin" ".tmp/image/bin/$bin"
    chmod 0555 ".tmp/image/bin/$bin"
  done
  suffix="-prebuilt"
fi

refs=()
for bin in invoices ingest; do
  ref="$repo/$bin:$tag"
  log "building $ref (target $bin$suffix)"
  docker build --quiet --target "$bin$suffix" "${args[@]}" -t "$ref" . >/dev/null
  log "$ref: $(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.1f MB", $1/1e6}')"
  refs+=("$ref")
done
if [[ $push == 1 ]]; then
  for ref in "${refs[@]}"; do docker push "$ref"; done
fi
printf '%s\n' "${refs[@]}"
