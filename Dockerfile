# syntax=docker/dockerfile:1
# netmend: the per-node network self-healing agent, packaged for the Helm chart in chart/.
#   docker build -t ghcr.io/netmend/netmend:0.1.0 .

# Base images: referenced by tag here, because no registry could be asked for their digests when
# this file was written and an unverified digest would be worse than none. A release pins both by
# digest (docs/supply-chain.md): `docker buildx imagetools inspect <image>` prints the digest of the
# tag, which is written as `<image>@sha256:<digest>` (the tag kept in front for readers); the
# Dockerfile test accepts either form.
# Cargo.lock is honoured: `cargo fetch --locked` and `cargo build --locked` fail on a stale lock.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Manifests first: the dependency download is cached until Cargo.toml or Cargo.lock change.
# The workspace has two members (agent, tests); cargo needs both manifests to resolve it.
COPY Cargo.toml Cargo.lock ./
COPY agent/Cargo.toml agent/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
# Placeholder targets so cargo accepts the manifests; nothing is built from them.
RUN mkdir -p agent/src tests/src \
 && touch agent/src/lib.rs tests/src/lib.rs \
 && echo 'fn main() {}' > agent/src/main.rs
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo fetch --locked

COPY agent agent
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p netmend \
 && install -D -m 0755 target/release/netmend /out/netmend

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="netmend" \
      org.opencontainers.image.description="Per-node network self-healing agent for Kubernetes: detects and mends broken nftables/iptables, ARP and promiscuous state" \
      org.opencontainers.image.source="https://github.com/netmend/netmend" \
      org.opencontainers.image.url="https://github.com/netmend/netmend" \
      org.opencontainers.image.documentation="https://github.com/netmend/netmend/blob/main/docs/operating.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="netmend" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# iptables provides iptables-legacy and ip6tables-legacy, which the legacy fixes run.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/netmend /usr/local/bin/netmend

# The chart runs it as uid 0 with every capability dropped but NET_ADMIN, NET_RAW and BPF.
# hadolint ignore=DL3002
USER 0:0
EXPOSE 9810
ENTRYPOINT ["/usr/local/bin/netmend"]
CMD ["run", "--config", "/etc/netmend/config.yaml", "--listen", "0.0.0.0:9810", "--state-dir", "/var/lib/netmend"]
