#!/usr/bin/env bash
# Crash tests for walsync: kill -9 of walsync, of the application mid-transaction,
# database files replaced under it, VACUUM; then restores compared row by row.
# Fault parts, on request: storage behind a fault-injecting proxy
# (scripts/faultproxy.py) on the write and the read path, full disks.
# See scripts/chaos.py for what each part does and checks.
#
#   scripts/chaos.sh [--short] [--s3] [--part NAME]... [--faults] [--seed N] [--keep] [-v]
#
# --short takes about 2 minutes (the test script's run); the full run about
# 15-20 minutes. --faults adds faults-write, faults-read and disk-full (about
# 30 s each with --short, a few minutes each in full; disk-full needs root). The binary is $WALSYNC_BIN, default target/release/walsync
# (built with `cargo build --release` when that default is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [ -z "${WALSYNC_BIN:-}" ]; then
  WALSYNC_BIN=target/release/walsync
  if [ ! -x "$WALSYNC_BIN" ]; then
    echo "==> cargo build --release (no $WALSYNC_BIN yet)"
    cargo build --release --quiet
  fi
fi
export WALSYNC_BIN

# Python kills its children (and they die with it); the trap covers the
# Python process itself when this script is interrupted or killed politely.
python3 scripts/chaos.py "$@" &
chaos=$!
trap 'kill -TERM "$chaos" 2>/dev/null || true; wait "$chaos" 2>/dev/null || true' INT TERM HUP
trap 'kill -KILL "$chaos" 2>/dev/null || true' EXIT
set +e
wait "$chaos"
status=$?
# `wait` returns early (>128) when a trapped signal arrives; wait for the real end.
while kill -0 "$chaos" 2>/dev/null; do wait "$chaos"; status=$?; done
exit "$status"
