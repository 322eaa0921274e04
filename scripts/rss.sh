#!/usr/bin/env bash
# Peak RSS of one `walsync watch` process replicating 1, 100 and 1,000
# databases that receive light writes (each database about one commit every
# 2 s) for 30 s, to a local s3s-fs server. Prints one line per count.
#   usage: scripts/rss.sh [SECONDS] [COUNTS...]   (defaults: 30, 1 100 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
counts=${*:-1 100 1000}
export PATH="$HOME/.cargo/bin:$PATH"
command -v s3s-fs >/dev/null || { echo "s3s-fs missing: run scripts/test.sh once (it installs it)"; exit 1; }
cargo build --release --quiet
bin="$PWD/target/release/walsync"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL_S3="http://127.0.0.1:$port" AWS_REGION=us-east-1
sleep 1
ulimit -n "$(ulimit -Hn)"
printf '%-10s %-14s %-10s\n' databases peak_rss_kib commits
for n in $counts; do
  d="$work/dbs-$n"
  python3 scripts/lightwriter.py create "$d" "$n"
  "$bin" watch -b "s3://bench/rss-$n" $(python3 -c "import sys;print(' '.join(f'$d/t{i:04d}/app.db' for i in range($n)))") >"$work/watch-$n.log" 2>&1 &
  pid=$!
  sleep 2
  commits=$(python3 scripts/lightwriter.py write "$d" "$n" "$seconds" 0.5)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -INT "$pid"; wait "$pid" || true
  printf '%-10s %-14s %-10s\n' "$n" "$hwm" "$commits"
done
