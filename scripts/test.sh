#!/usr/bin/env bash
# The whole test suite of netmend, on a fresh Debian 12 machine as root: installs what the tests
# need when it is missing, then runs formatting, lints, unit tests, the privileged end-to-end tests
# in network namespaces, and the Helm chart tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the end-to-end tests need root (network namespaces, nftables, x_tables); run as root" >&2
  exit 2
fi

# Debian packages the tests drive: binary -> package.
missing=()
for pair in nft:nftables iptables-legacy:iptables iptables-nft:iptables ip:iproute2 ss:iproute2 \
            arping:arping bpftool:bpftool nsenter:util-linux setpriv:util-linux python3:python3 \
            pip3:python3-pip ipset:ipset; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "/sbin/$bin" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Supply chain (deny.toml): licenses, bans, sources; seconds, no network once crates are cached.
# Advisories need a database fetched from outside: scripts/hardening.sh runs them when it can.
scripts/supply-chain.sh
cargo build --locked -p netmend
cargo test --locked --workspace
if [ -x tests/chart/run.sh ]; then
  tests/chart/run.sh
fi
