#!/usr/bin/env bash
# Benchmark: `netmend check --window 0s` against `iptables-nft-save -t nat` and `nft list ruleset`
# (or `iptables-legacy-save`) on the same kube-proxy-shaped ruleset, side by side, in a fresh
# network namespace.
#
# usage: bench/ruleset.sh [SERVICES] [ENDPOINTS] [RUNS] [MODE]   (default 10000 2 5 iptables; needs root)
# MODE is kube-proxy's back-end: `iptables` (loaded with iptables-nft-restore), `legacy` (iptables
# mode loaded with iptables-legacy-restore) or `nftables` (nft -f).
# Prints wall time (hyperfine mean and min) and peak RSS (GNU time) of each command.
set -euo pipefail
cd "$(dirname "$0")/.."
services=${1:-10000}; endpoints=${2:-2}; runs=${3:-5}; mode=${4:-iptables}
ns="nm-bench-$$"
bin=target/release/netmend
gen=target/release/gen-ruleset  # the project's kube-proxy ruleset generator (tests/src/ruleset_gen.rs)
[ -x "$bin" ] || cargo build --release --locked -p netmend
[ -x "$gen" ] || cargo build --release --locked -p netmend-e2e --bin gen-ruleset
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns add "$ns"
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }
in_ns ip link set lo up
rules=$(mktemp)
gen_mode=$mode; [ "$mode" = legacy ] && gen_mode=iptables
"$gen" --mode "$gen_mode" "$services" "$endpoints" > "$rules"
compare=("iptables-nft-save -t nat" "nft list ruleset")
if [ "$mode" = legacy ]; then
  in_ns iptables-legacy-restore < "$rules"
  compare=("iptables-legacy-save -t nat" "iptables-legacy-save")
  echo "ruleset ($mode): $services services x $endpoints endpoints: $(in_ns iptables-legacy-save -t nat | grep -c '^-A') rules in $(in_ns iptables-legacy-save -t nat | grep -c '^:') chains in nat"
elif [ "$mode" = nftables ]; then
  in_ns nft -f "$rules"
  echo "ruleset ($mode mode): $services services x $endpoints endpoints: $(grep -c '^add rule' "$rules") rules in $(grep -c '^add chain' "$rules") chains, $(grep -c '^add element' "$rules") map and set elements"
else
  in_ns iptables-nft-restore < "$rules"
  echo "ruleset ($mode mode): $services services x $endpoints endpoints: $(in_ns iptables-nft-save -t nat | grep -c '^-A') rules in $(in_ns iptables-nft-save -t nat | grep -c '^:') chains in nat"
fi
rm -f "$rules"

peak_rss() {  # peak RSS in MiB of one run
  in_ns /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -n 1 | awk '{ printf "%.1f", $1 / 1024 }'
}

printf '%-40s %10s %10s %12s\n' command "mean s" "min s" "peak MiB"
for cmd in "$bin check --window 0s --output json" "${compare[@]}"; do
  # shellcheck disable=SC2086
  json=$(mktemp)
  hyperfine --style none --warmup 1 --runs "$runs" -i --export-json "$json" \
    "nsenter --net=/run/netns/$ns $cmd" >/dev/null 2>&1
  mean=$(python3 -c "import json,sys; r=json.load(open('$json'))['results'][0]; print(f\"{r['mean']:.3f}\")")
  min=$(python3 -c "import json,sys; r=json.load(open('$json'))['results'][0]; print(f\"{r['min']:.3f}\")")
  rm -f "$json"
  # shellcheck disable=SC2086
  rss=$(peak_rss $cmd)
  printf '%-40s %10s %10s %12s\n' "${cmd#target/release/}" "$mean" "$min" "$rss"
done
