#!/usr/bin/env bash
# Fuzzing of every decoder of outside bytes in netmend (netmend::fuzz; docs/hardening.md).
#   scripts/fuzz.sh              the bounded property run of the test suite: captured fixtures
#                                mutated for 5 s per decoder (stable toolchain)
#   scripts/fuzz.sh --long [S]   the property run for S seconds per decoder (default 60), then a
#                                coverage-guided libFuzzer run of S seconds per target (cargo-fuzz,
#                                nightly toolchain, installed when missing), seeded from the same
#                                inputs; when cargo-fuzz cannot be had it says so and the property
#                                run stands alone
# Prints one "fuzz <decoder>: ..." line per decoder and one last line starting with "fuzz:";
# exit 0 only when no decoder panicked, hung, or failed to build.
# A failing input is kept (the path is printed); once fixed, copy it to
# agent/testdata/fuzz/regressions/<decoder>/ so every run replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
secs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --long) long=1; secs=60
            if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then secs=$2; shift; fi ;;
    *) echo "usage: scripts/fuzz.sh [--long [SECONDS]]" >&2; exit 2 ;;
  esac
  shift
done

work="target/fuzz-run"
mkdir -p "$work"
report="$work/property.txt"
: >"$report"
failed=()

# ---- property run (stable) ----------------------------------------------------------------------
echo "fuzz: property run, ${secs}s per decoder"
if ! NETMEND_FUZZ_SECS="$secs" NETMEND_FUZZ_REPORT="$PWD/$report" \
     cargo test --locked -q -p netmend --test fuzz_decoders; then
  failed+=("property run")
fi
cat "$report"
property_inputs=$(awk '{n += $3} END {print n + 0}' "$report")
property_decoders=$(wc -l <"$report")
summary="property: $property_inputs inputs over $property_decoders decoders (${secs}s each)"

# ---- coverage-guided run (cargo-fuzz, nightly) --------------------------------------------------
if [ "$long" = 1 ]; then
  guided=""
  if ! cargo +nightly --version >/dev/null 2>&1; then
    guided="coverage-guided: SKIPPED (no nightly toolchain)"
  elif ! command -v cargo-fuzz >/dev/null 2>&1 && ! cargo install --locked --quiet cargo-fuzz --version 0.13.2; then
    guided="coverage-guided: SKIPPED (cargo-fuzz could not be installed)"
  elif ! cargo +nightly metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
    failed+=("fuzz/Cargo.lock out of date")
    guided="coverage-guided: not run (fuzz/Cargo.lock out of date)"
  elif ! cargo +nightly fuzz build; then
    failed+=("cargo fuzz build")
    guided="coverage-guided: not run (build failed)"
  else
    seeds="$work/seeds"
    rm -rf "$seeds"
    NETMEND_FUZZ_EXPORT="$PWD/$seeds" cargo test --locked -q -p netmend --test fuzz_decoders \
      export_seeds -- --ignored >/dev/null
    runs_total=0
    targets=0
    for target in $(cargo +nightly fuzz list); do
      mkdir -p "fuzz/corpus/$target"
      log="$work/$target.log"
      if cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "$seeds/$target" -- \
           -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1; then
        status="no crash, no hang"
      else
        status="FAILED (artifact in fuzz/artifacts/$target/, log $log)"
        failed+=("cargo fuzz $target")
      fi
      # "Done N runs" at a clean end; after a crash, the last status line ("#N ...") counts.
      runs=$(grep -oE "Done [0-9]+ runs" "$log" | tail -n1 | grep -oE "[0-9]+" ||
             grep -oE "^#[0-9]+" "$log" | tail -n1 | tr -d '#' || echo 0)
      cov=$(grep -oE "cov: [0-9]+" "$log" | tail -n1 | grep -oE "[0-9]+" || echo "?")
      corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
      echo "fuzz $target (coverage-guided): $runs runs in ${secs}s, coverage $cov edges, corpus $corpus, $status"
      runs_total=$((runs_total + runs))
      targets=$((targets + 1))
    done
    guided="coverage-guided: $runs_total runs over $targets targets (${secs}s each)"
  fi
  summary="$summary; $guided"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}; $summary"
  exit 1
fi
echo "fuzz: $summary; no panic, no hang"
