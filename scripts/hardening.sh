#!/usr/bin/env bash
# Proves netmend survives (docs/hardening.md): fuzzed decoders, a soak under churn, injected faults,
# least privilege, a clean supply chain. As root, like scripts/test.sh.
#   scripts/hardening.sh           the full run: fuzzing 60 s per decoder plus a coverage-guided
#                                  cargo-fuzz run, the 30-minute soak, fault injection, least
#                                  privilege, supply chain with advisories
#   scripts/hardening.sh --quick   under 15 minutes: the bounded fuzz run, the 5-minute soak, the
#                                  same fault-injection and least-privilege tests, supply chain
# Each part prints its own figures; the last line starts with "hardening:" and sums them up.
# Exit 0 only when no part failed (a part that could not run is reported as skipped, with why).
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: scripts/hardening.sh [--quick]" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "scripts/hardening.sh: the soak and the end-to-end tests need root (network namespaces, nftables, x_tables); run as root" >&2
  exit 2
fi
export PATH="$PATH:/usr/sbin:/sbin"

work="target/hardening"
mkdir -p "$work"
started=$(date +%s)
parts=()
failed=()

# Runs one part: its name, then the command. Keeps the output in $work/<name>.log, echoes it,
# and records the part's last line starting with "<name>:" (or its exit status) for the summary.
run_part() {
  local name=$1; shift
  local log="$work/$name.log" t0 rc line
  t0=$(date +%s)
  echo "== $name: $*"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  line=$(grep -E "^$name:" "$log" | tail -n1 | sed "s/^$name: *//")
  [ -n "$line" ] || line="exit $rc"
  line="$line ($(( $(date +%s) - t0 ))s)"
  if [ "$rc" != 0 ]; then
    failed+=("$name")
    parts+=("$name FAILED: $line")
  else
    parts+=("$name: $line")
  fi
}

# 1. Fuzzing.
if [ "$quick" = 1 ]; then
  run_part fuzz scripts/fuzz.sh
else
  run_part fuzz scripts/fuzz.sh --long 60
fi

# 2. Soak (scripts/soak.sh prints its own "soak:" line).
if [ -x scripts/soak.sh ]; then
  if [ "$quick" = 1 ]; then
    run_part soak scripts/soak.sh --quick
  else
    run_part soak scripts/soak.sh
  fi
else
  parts+=("soak: SKIPPED (scripts/soak.sh is not in this tree)")
fi

# 3. Fault injection and least privilege: end-to-end tests in network namespaces.
e2e_tests=()
e2e_names=()
for t in faults least_privilege; do
  if [ -f "tests/tests/$t.rs" ]; then
    e2e_tests+=(--test "$t")
    e2e_names+=("$t")
  fi
done
if [ ${#e2e_tests[@]} -gt 0 ]; then
  faults_and_privilege() {
    local out rc passed failed_count
    out=$(mktemp)
    # The tests run target/debug/netmend, which building the test crate does not rebuild.
    cargo build --locked -p netmend || return 1
    cargo test --locked -p netmend-e2e "${e2e_tests[@]}" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    passed=$(grep -oE "test result: [a-zA-Z]+\. [0-9]+ passed" "$out" | grep -oE "[0-9]+ passed" | awk '{n += $1} END {print n + 0}')
    failed_count=$(grep -oE "[0-9]+ failed" "$out" | awk '{n += $1} END {print n + 0}')
    rm -f "$out"
    echo "e2e: ${e2e_names[*]}: $passed passed, $failed_count failed"
    return "$rc"
  }
  run_part e2e faults_and_privilege
else
  parts+=("e2e: SKIPPED (tests/tests/faults.rs and least_privilege.rs are not in this tree)")
fi

# 4. Supply chain (advisories when the database can be had; NETMEND_REQUIRE_ADVISORIES=1 makes
# their absence a failure).
run_part supply-chain scripts/supply-chain.sh --advisories

elapsed=$(( $(date +%s) - started ))
mode=full
[ "$quick" = 1 ] && mode=quick
summary=$(printf '%s | ' "${parts[@]}")
summary=${summary% | }
if [ ${#failed[@]} -gt 0 ]; then
  echo "hardening: FAILED ($mode, ${elapsed}s; failed: ${failed[*]}) | $summary"
  exit 1
fi
echo "hardening: ok ($mode, ${elapsed}s) | $summary"
