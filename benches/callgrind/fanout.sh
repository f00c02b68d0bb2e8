#!/usr/bin/env bash
# Instructions per fan-out delivery, counted by callgrind (stable where timings on this shared
# machine are not): a chatd binary under `valgrind --tool=callgrind` serves driver.mjs's fixed
# workload, and the instructions of the measured part are printed, with per delivery.
#
#   benches/callgrind/fanout.sh BINARY [BINARY …]   # e.g. target/release/chatd /tmp/old/chatd
#   CONNS=100 MESSAGES=100 (defaults)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CONNS="${CONNS:-100}"
MESSAGES="${MESSAGES:-100}"
[[ $# -gt 0 ]] || { echo "usage: $0 BINARY [BINARY …]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "$0: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ -f "$HERE/../peer/node_modules/ws/package.json" ]] || (cd "$HERE/../peer" && npm ci --no-audit --no-fund)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chatd-callgrind.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for bin in "$@"; do
  port="$(free_port)"
  data="$(mktemp -d "$WORK/data.XXXXXX")"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/out" "$bin" serve --listen "127.0.0.1:$port" \
    --data-dir "$data" --threads 2 --max-connections-per-account 10000 --max-connections-per-ip 10000 \
    --max-unauthenticated-per-ip 10000 --rate 1000 --burst 1000 --log warn >"$WORK/server.log" 2>&1 &
  server=$!
  deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    (( SECONDS < deadline )) || { echo "$bin did not listen within 60 s" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.2
  done
  node "$HERE/driver.mjs" "ws://127.0.0.1:$port/ws" "$CONNS" "$MESSAGES" "$server" >/dev/null
  kill -TERM "$server"; wait "$server" || true
  total="$(callgrind_annotate "$WORK/out.1" | awk '/PROGRAM TOTALS/ {gsub(/,/,"",$1); print $1}')"
  echo "$bin: $total instructions for $((CONNS * MESSAGES)) deliveries, $((total / (CONNS * MESSAGES))) per delivery"
  rm -f "$WORK"/out*
done
