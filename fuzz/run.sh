#!/usr/bin/env bash
# Runs every fuzz target for a while on its committed corpus (fuzz/corpus/TARGET), on the stable
# toolchain (`--sanitizer none`: libFuzzer's coverage guidance without AddressSanitizer, which
# would need nightly; the targets are safe Rust, so a crash is a panic or an abort, which
# libFuzzer catches either way). Installs cargo-fuzz if it is missing. A crash fails the run and
# leaves the input in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh            # 15 s per target (what CI runs)
#   SECONDS_PER_TARGET=600 fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
per_target="${SECONDS_PER_TARGET:-15}"
for target in http_head client_frame stored_value admin_request import_line; do
  echo "fuzz: $target for ${per_target} s"
  mkdir -p "corpus/$target"
  # The corpus directory is only read: new inputs go to a scratch copy, so a CI run leaves the
  # checkout as it found it.
  scratch="$(mktemp -d)"
  cargo fuzz run --sanitizer none -O "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$per_target" -max_len=8192 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::new_units_added)|panicked|ERROR|crash-' || true
  rm -rf "$scratch"
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target crashed, ran out of memory or hung; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
