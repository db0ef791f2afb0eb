# syntax=docker/dockerfile:1
# Container images of the two pipelines: `invoices` (the streaming workers) and `ingest` (the API poller).
# Small (distroless: glibc, libgcc, CA certificates, nothing else), non-root (uid/gid 65532, the
# `nonroot` user of distroless and the uid the Kubernetes manifests require) and meant for a read-only
# root file system (the binaries write no files).
#
# Targets (docker build --target NAME):
#   invoices, ingest                    compile in BUILDER_IMAGE, copy into RUNTIME_IMAGE (the usual build)
#   invoices-prebuilt, ingest-prebuilt  copy binaries compiled on the host from .tmp/image/bin/
#                                       (scripts/image.sh --prebuilt: CI compiles once, reuses them here)
# The prebuilt targets come first: the legacy builder (no BuildKit) builds every stage up to the target,
# so a prebuilt build never needs BUILDER_IMAGE (and, with that builder, a source build needs the staged
# binaries too; BuildKit, the default builder, skips stages the target does not use). A binary compiled on the host must link against a glibc
# no newer than RUNTIME_IMAGE's (Debian 12: 2.36).
#
# Base images are build arguments pinned by digest; scripts/image.sh explains how to build on a machine
# that cannot reach a public registry (a base made from Debian packages). Update the digests together
# with the tags (e.g. with Renovate or Dependabot), never by dropping the digest.
ARG BUILDER_IMAGE=docker.io/library/rust:1.88-bookworm@sha256:af306cfa71d987911a781c37b59d7d67d934f49684058f96cf72079c3626bfe0
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="fluxo-invoices" \
      org.opencontainers.image.description="NF-e invoices from an HTTP API through Pub/Sub into Bigtable, BigQuery and Cloud Storage" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
USER 65532:65532
# Metrics, /healthz and /readyz (`--metrics-addr`), and `ingest serve`'s default port.
EXPOSE 9464 8080
STOPSIGNAL SIGTERM

FROM runtime AS invoices-prebuilt
COPY .tmp/image/bin/invoices /usr/local/bin/invoices
ENTRYPOINT ["/usr/local/bin/invoices"]
CMD ["--help"]

FROM runtime AS ingest-prebuilt
COPY .tmp/image/bin/ingest /usr/local/bin/ingest
ENTRYPOINT ["/usr/local/bin/ingest"]
CMD ["--help"]

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
# Toolchain: the builder image's own (its tag pins the Rust version; rust-toolchain.toml is not sent,
# see .dockerignore). Only the two binaries are compiled; debug info is stripped from the copies.
COPY . .
RUN cargo build --release --locked -p invoices -p ingest \
 && mkdir -p /out \
 && objcopy --strip-debug target/release/invoices /out/invoices \
 && objcopy --strip-debug target/release/ingest /out/ingest

FROM runtime AS invoices
COPY --from=build /out/invoices /usr/local/bin/invoices
ENTRYPOINT ["/usr/local/bin/invoices"]
CMD ["--help"]

FROM runtime AS ingest
COPY --from=build /out/ingest /usr/local/bin/ingest
ENTRYPOINT ["/usr/local/bin/ingest"]
CMD ["--help"]
