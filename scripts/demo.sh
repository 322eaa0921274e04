#!/usr/bin/env bash
# Demo: builds walsync, creates a WAL-mode demo database with a background
# writer, and replicates it to a local folder (a file:// replica) until you
# press Ctrl-C. Then restore it with the command it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
demo="$PWD/demo"
mkdir -p "$demo"
python3 scripts/lightwriter.py create "$demo" 1
db="$demo/t0000/app.db"
python3 scripts/lightwriter.py write "$demo" 1 3600 2 >/dev/null &
writer=$!
trap 'kill $writer 2>/dev/null || true' EXIT
echo "replicating $db to file://$demo/replica (Ctrl-C to stop)"
echo "then: target/release/walsync restore app -o /tmp/app-restored.db -b file://$demo/replica"
target/release/walsync watch "$db" -b "file://$demo/replica" --sync-interval 1s
