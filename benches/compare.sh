#!/usr/bin/env bash
# Before/after on the same machine, back to back: builds REV in a temporary worktree, then runs
# the storage, durable and fan-out benches there and here, one after the other, and prints the
# summary rows of both. Each durable run gets the sled ceiling and raw fsync of its own storage
# run (each tree measures the write shape its own chatd uses).
#
#   benches/compare.sh REV                 # e.g. benches/compare.sh HEAD~3 (≈ 15 min)
#   benches/compare.sh REV --smoke         # every bench at tiny size
#   OUT=/tmp/cmp benches/compare.sh REV    # keep the full outputs there (default: a temp dir)
#
# Do not build or run anything else meanwhile: the machine's other load moves the figures.
set -euo pipefail
REV="${1:?usage: benches/compare.sh REV [--smoke]}"
shift
ARGS=("$@")
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/chatd-compare.XXXXXX")}"
mkdir -p "$OUT"
BEFORE="$(mktemp -d "${TMPDIR:-/tmp}/chatd-before.XXXXXX")"
cleanup() { git -C "$HERE" worktree remove --force "$BEFORE" 2>/dev/null || rm -rf "$BEFORE"; }
trap cleanup EXIT
git -C "$HERE" worktree add --detach --force "$BEFORE" "$REV" >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "building $REV and the working tree (release)..." >&2
for dir in "$BEFORE" "$HERE"; do
  if ! (cd "$dir" && cargo build --release --benches >"$OUT/build.log" 2>&1); then
    echo "building $dir failed; see $OUT/build.log" >&2
    exit 1
  fi
done

row() { # the value of column $3 in the row whose first column is $2, in file $1
  awk -F'|' -v name="$2" -v batch="$3" '{g=$2; b=$3; gsub(/^ +| +$/,"",g); gsub(/^ +| +$/,"",b)}
    g==name && (batch=="" || b==batch) {r=(batch=="" ? $3 : $4); gsub(/ /,"",r); print r}' "$1" | tail -1
}

for side in before after; do
  dir="$HERE"; [[ "$side" == before ]] && dir="$BEFORE"
  echo "=== $side: storage, durable" >&2
  (cd "$dir" && cargo bench --bench storage -- "${ARGS[@]}" >"$OUT/$side-storage.txt" 2>"$OUT/$side-storage.err")
  ceiling="$(row "$OUT/$side-storage.txt" "inserts (chatd)" 512)"
  [[ -z "$ceiling" ]] && ceiling="$(row "$OUT/$side-storage.txt" "transaction (chatd)" 512)"
  fsync="$(row "$OUT/$side-storage.txt" "file write 8 B + sync_data" "")"
  extra=()
  [[ -n "$ceiling" ]] && extra+=(--ceiling "$ceiling")
  [[ -n "$fsync" ]] && extra+=(--fsync-us "$fsync")
  (cd "$dir" && cargo bench --bench durable -- "${ARGS[@]}" "${extra[@]}" >"$OUT/$side-durable.txt" 2>"$OUT/$side-durable.err")
done
for side in before after; do
  dir="$HERE"; [[ "$side" == before ]] && dir="$BEFORE"
  echo "=== $side: fanout" >&2
  (cd "$dir" && cargo bench --bench fanout -- --rates 20 "${ARGS[@]}" >"$OUT/$side-fanout.txt" 2>"$OUT/$side-fanout.err")
done

for side in before after; do
  echo
  echo "## $side ($([[ "$side" == before ]] && echo "$REV" || echo "working tree"))"
  grep -h '^(c)\|^| strict' "$OUT/$side-storage.txt" || true
  grep -h '^SUMMARY' "$OUT/$side-durable.txt" "$OUT/$side-fanout.txt" | sed 's/^SUMMARY//'
done
echo
echo "full outputs: $OUT" >&2
