#!/usr/bin/env bash
# Browser tests for the chatd web client: headless Debian Chromium driven by playwright-core.
# Installs what it needs (idempotent), builds chatd, runs chat.spec.mjs, client.spec.mjs and cluster.spec.mjs
# (two nodes and a private redis-server) with node's test runner.
# Env: CHATD_BIN=path to use a prebuilt server instead of `cargo build`; CHROMIUM=browser path;
# REDIS_SERVER=redis-server binary for cluster.spec.mjs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
  echo "run.sh: installing chromium from Debian" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

if ! command -v redis-server >/dev/null && [ -z "${REDIS_SERVER:-}" ]; then
  echo "run.sh: installing redis-server from Debian (cluster.spec.mjs)" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi

cd "$HERE"
if [ ! -f node_modules/playwright-core/package.json ] || [ ! -f node_modules/ws/package.json ]; then
  npm ci --no-audit --no-fund
fi

if [ -z "${CHATD_BIN:-}" ]; then
  (cd "$ROOT" && cargo build)
  CHATD_BIN="$ROOT/target/debug/chatd"
fi
export CHATD_BIN

CHATD_TEST_TMP="$(mktemp -d "${TMPDIR:-/tmp}/chatd-browser.XXXXXX")"
export CHATD_TEST_TMP
cleanup() {
  # Kill any server (chatd or redis-server) the tests started and did not stop (their pids are recorded here),
  # then the temp dir.
  for f in "$CHATD_TEST_TMP"/server-*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$CHATD_TEST_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p artifacts
# A failed test can leave a bot's socket or a browser open, which would keep node's event loop
# (and so this script) alive forever: force the exit once every test has finished, and bound each.
node --test --test-force-exit --test-timeout=180000 --test-reporter=spec chat.spec.mjs client.spec.mjs cluster.spec.mjs
