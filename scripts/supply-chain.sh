#!/usr/bin/env bash
# The supply-chain check of netmend with cargo-deny and the policy in deny.toml:
#   scripts/supply-chain.sh                licenses, bans (duplicates, denied crates) and sources;
#                                          needs no network once the crates are in cargo's cache
#   scripts/supply-chain.sh --advisories   the same, then the RustSec advisories: the advisory
#                                          database (a git repository) is fetched first; when it
#                                          cannot be fetched and no copy is at hand the check is
#                                          reported SKIPPED, never passed
# cargo-deny is installed when missing (a pinned version, with its own lock file).
# Prints one last line starting with "supply-chain:"; exit 0 only when every check that ran
# passed. NETMEND_REQUIRE_ADVISORIES=1 makes a skipped advisories check a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
advisories=0
for arg in "$@"; do
  case "$arg" in
    --advisories) advisories=1 ;;
    *) echo "usage: scripts/supply-chain.sh [--advisories]" >&2; exit 2 ;;
  esac
done

if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "supply-chain: installing cargo-deny $CARGO_DENY_VERSION (once per machine)"
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

failed=()
ran=()
if cargo deny --locked check licenses bans sources; then
  ran+=("licenses ok" "bans ok" "sources ok")
else
  failed+=("licenses/bans/sources")
fi

advisory_note=""
if [ "$advisories" = 1 ]; then
  db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  fetch_log=$(mktemp)
  if cargo deny --locked fetch db >"$fetch_log" 2>&1; then
    fetched=1
  else
    fetched=0
  fi
  db=$(find "$db_root" -mindepth 1 -maxdepth 1 -type d -name 'advisory-db*' 2>/dev/null | head -n1)
  if [ -n "$db" ] && [ -d "$db/crates" ]; then
    age=$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo "unknown date")
    if [ "$fetched" = 0 ]; then
      echo "supply-chain: the advisory database could not be refreshed; using the copy of $age"
    fi
    if cargo deny --locked --offline check advisories; then
      ran+=("advisories ok (database of $age)")
    else
      failed+=("advisories")
    fi
  else
    reason=$(grep -m1 -oE "fatal: .*" "$fetch_log" || grep -m1 -oE "failed to fetch[^\[]*" "$fetch_log" || true)
    advisory_note="advisories SKIPPED: the advisory database could not be fetched (${reason:-see cargo deny fetch db}) and no local copy exists"
    echo "supply-chain: $advisory_note" >&2
    if [ "${NETMEND_REQUIRE_ADVISORIES:-0}" = 1 ]; then
      failed+=("advisories (required, no database)")
    fi
  fi
  rm -f "$fetch_log"
fi

summary=$(IFS=,; echo "${ran[*]:-}" | sed 's/,/, /g')
[ -n "$advisory_note" ] && summary="${summary:+$summary, }advisories SKIPPED (no database)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "supply-chain: FAILED: ${failed[*]}${summary:+; $summary}"
  exit 1
fi
echo "supply-chain: $summary"
