#!/usr/bin/env bash
# Reproduces issue 7's table in one go (about 10-13 minutes on the 2-core machine): release
# build, the Node peer's `ws` installed with npm if missing, then each bench program, which pins
# the servers to core 0 and itself (the load generator) to core 1. Prints every bench's own
# tables, then one summary table in markdown. Raw outputs are kept in $OUT (default a temp dir).
#
#   benches/run-all.sh             # the full table
#   benches/run-all.sh --smoke     # every bench at tiny size, a few seconds each
#   RUNS=5 benches/run-all.sh      # more runs per figure (default 3)
#
# If benches/storage.rs exists (sled's ceiling for the same records, and one raw fsync), it runs
# first and durable prints the ratios: the ceiling is its "inserts (chatd)" row at batch 512
# (messages/s), the raw fsync its "file overwrite 8 B in place + sync_data" p50 (µs: the cheaper
# of its two raw syncs, so the stricter reference; older versions only had "file write 8 B"). A line
# `STORAGE_CEILING_PER_S=<n>` / `FSYNC_P50_US=<n>` in its output, if present, wins.
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=()
if [[ "${1:-}" == "--smoke" ]]; then ARGS+=(--smoke); fi
if [[ -n "${RUNS:-}" ]]; then ARGS+=(--runs "$RUNS"); fi
OUT="${OUT:-$(mktemp -d -t chatd-bench.XXXXXX)}"
mkdir -p "$OUT"
START=$(date +%s)

# 10,000 idle connections plus the storm's clients need more than the usual 1024 descriptors;
# the benches also raise their own soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if ! command -v node >/dev/null; then
  echo "node is not installed: the Node ws peer will be skipped" >&2
elif [[ ! -d benches/peer/node_modules/ws ]]; then
  (cd benches/peer && npm install --no-audit --no-fund --silent) || echo "npm install failed: the peer will be skipped" >&2
fi

echo "building (release)..." >&2
cargo build --release --quiet
cargo bench --no-run --quiet 2>/dev/null || cargo bench --no-run

run() { # name, args...
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "=== $name $*" >&2
  if cargo bench --quiet --bench "$name" -- "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"; then
    echo "    $(( $(date +%s) - t0 )) s" >&2
  else
    echo "    FAILED after $(( $(date +%s) - t0 )) s (see $OUT/$name.err)" >&2
  fi
  cat "$OUT/$name.txt" | grep -v '^SUMMARY|'
  echo
}

DURABLE_EXTRA=()
if [[ -f benches/storage.rs ]] && grep -q 'name = "storage"' Cargo.toml; then
  run storage "${ARGS[@]}"
  C=$(sed -n 's/^STORAGE_CEILING_PER_S=\([0-9.]*\).*/\1/p' "$OUT/storage.txt" | tail -1)
  F=$(sed -n 's/^FSYNC_P50_US=\([0-9.]*\).*/\1/p' "$OUT/storage.txt" | tail -1)
  [[ -z "$C" ]] && C=$(awk -F'|' '{g=$2; b=$3; gsub(/^ +| +$/,"",g); gsub(/^ +| +$/,"",b)} g=="inserts (chatd)" && b=="512" {r=$4; gsub(/ /,"",r); print r}' "$OUT/storage.txt" | tail -1)
  fsync_row() { awk -F'|' -v want="$1" '{g=$2; gsub(/^ +| +$/,"",g)} g==want {r=$3; gsub(/ /,"",r); print r}' "$OUT/storage.txt" | tail -1; }
  [[ -z "$F" ]] && F=$(fsync_row "file overwrite 8 B in place + sync_data")
  [[ -z "$F" ]] && F=$(fsync_row "file write 8 B + sync_data")
  if [[ -n "$C" ]]; then DURABLE_EXTRA+=(--ceiling "$C"); fi
  if [[ -n "$F" ]]; then DURABLE_EXTRA+=(--fsync-us "$F"); fi
  echo "storage: sled ceiling ${C:-?} messages/s, one raw fsync (sync_data) p50 ${F:-?} µs" >&2
else
  echo "(no benches/storage.rs yet: durable prints no ceiling ratio)" >&2
fi

run fanout "${ARGS[@]}"
run saturation "${ARGS[@]}"
run durable "${ARGS[@]}" "${DURABLE_EXTRA[@]}"
run idle "${ARGS[@]}"
run storm "${ARGS[@]}"

echo "## Issue 7 table ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Median (range) of the runs; servers pinned to core 0, generator to core 1. Raw output: $OUT"
echo
echo "| scenario | floor | Node ws | chatd | chatd ratios | bar (issue 7) |"
echo "| --- | --- | --- | --- | --- | --- |"
cat "$OUT"/{fanout,saturation,durable,idle,storm}.txt 2>/dev/null | sed -n 's/^SUMMARY|/|/p'
echo
echo "total: $(( $(date +%s) - START )) s" >&2
