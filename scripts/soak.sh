#!/usr/bin/env bash
# Soak of the release agent on a 10,000-service node under kube-proxy-style churn, hostports that
# come and go, link flaps and ARP traffic: 30 minutes by default, 5 with --quick (bench/soak.py
# says what runs and what must hold). Builds the release binaries it needs, then runs as root;
# the namespaces it creates are removed on exit, whatever the outcome.
#
# usage: scripts/soak.sh [--quick] [--minutes N] [--services N] [--out DIR]
# The last line starts with `soak:` and carries the figures; exit 0 only when everything held.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "soak: needs root (network namespaces, nftables)" >&2
  exit 2
fi
export PATH="$PATH:/usr/sbin:/sbin"
for tool in nsenter iptables-nft-restore iptables-nft arping ip python3; do
  command -v "$tool" >/dev/null || { echo "soak: needs $tool (scripts/test.sh installs it)" >&2; exit 2; }
done
cargo build --release --locked -q -p netmend --bin netmend
cargo build --release --locked -q -p netmend-e2e --bin gen-ruleset
# The namespaces are named after this shell's pid: removed here too, should the driver be killed.
export SOAK_TAG=$$
trap 'ip netns del "nm-soak-$SOAK_TAG" 2>/dev/null || true; ip netns del "nm-soak-lan-$SOAK_TAG" 2>/dev/null || true' EXIT
python3 bench/soak.py "$@"
