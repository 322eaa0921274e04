#!/usr/bin/env bash
# Scale of one `walsync watch` over many tenant databases, to a folder
# replica: for each count, the time until every database has its first
# snapshot, descriptors, RSS (peak and idle), idle CPU at a 1 s sync
# interval, and the CPU a rescan costs: the median of those that found
# nothing new / the one that found one new tenant (and, apart, the CPU of
# opening it, the work any database costs at start) / the last full one
# (at the first discovery after start, then every 5 minutes, or when the
# kernel could not say what changed).
#
#   usage: scripts/fleet-scale.sh [COUNTS...]      (default: 1000 4500)
#          IDLE_SECONDS=60 scripts/fleet-scale.sh 4500
#
# Needs an open-files limit of about 4 per database (it raises the soft
# limit to the hard one). Builds the release binary if WALSYNC_BIN is unset.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=${*:-1000 4500}
idle=${IDLE_SECONDS:-60}
bin=${WALSYNC_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet -p walsync
  bin="$PWD/target/release/walsync"
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
first_snapshots() { find "$1" -path '*/ltx/9/*.ltx' 2>/dev/null | wc -l; }

printf '%-9s %-16s %-12s %-10s %-12s %-12s %-14s %-36s\n' databases first_snapshots descriptors fd_per_db peak_rss_mb idle_rss_mb idle_cpu_pct rescan_cpu_ms_quiet/new/full
for n in $counts; do
  d="$work/dbs-$n"
  python3 scripts/lightwriter.py create "$d" "$n"
  cat >"$work/walsync-$n.toml" <<EOF
[s3]
bucket = "file://$work/replica-$n"
[sync]
sync_interval = "1s"
discover_interval = "10s"
[control]
socket = "$work/control-$n.sock"
[[databases]]
path = "$d/*/app.db"
EOF
  start=$(date +%s.%N)
  WALSYNC_LOG=debug "$bin" watch --config "$work/walsync-$n.toml" 2>"$work/watch-$n.log" &
  pid=$!
  until [ "$(first_snapshots "$work/replica-$n")" -ge "$n" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "watch exited:"; tail -5 "$work/watch-$n.log"; exit 1; }
    sleep 0.5
  done
  snap_s=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f s", e - s }')
  sleep 5
  fds=$(ls "/proc/$pid/fd" | wc -l)
  t0=$(cpu_ticks "$pid")
  sleep "$idle"
  t1=$(cpu_ticks "$pid")
  idle_pct=$(awk -v a="$t0" -v b="$t1" -v hz="$ticks" -v s="$idle" 'BEGIN { printf "%.2f", 100 * (b - a) / hz / s }')
  # One new tenant: the next rescan finds it.
  python3 - "$d" "$n" <<'PY'
import os, sqlite3, sys
p = os.path.join(sys.argv[1], "new-tenant", "app.db")
os.makedirs(os.path.dirname(p), exist_ok=True)
c = sqlite3.connect(p); c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)"); c.commit(); c.close()
PY
  until grep -q 'new-tenant/app: found' "$work/watch-$n.log"; do sleep 0.5; done
  sleep 1
  # The rescan that found the new tenant (looking, then opening it like
  # any database at start), and the median of the others.
  found_line=$(grep 'rescanned .* 1 new' "$work/watch-$n.log" | tail -1)
  found_look=$(sed -E 's/.*; ([0-9.]+) ms of CPU to look.*/\1/' <<<"$found_line")
  found_open=$(sed -E 's/.*, ([0-9.]+) ms to open the new/\1/' <<<"$found_line")
  quiet=$(grep 'rescanned .* 0 new' "$work/watch-$n.log" | sed -E 's/.*; ([0-9.]+) ms of CPU to look.*/\1/' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  full=$(grep 'rescanned everything' "$work/watch-$n.log" | tail -1 | sed -E 's/.*; ([0-9.]+) ms of CPU to look.*/\1/')
  rescan="$quiet / $found_look (+$found_open open) / $full"
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  idle_rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  kill -INT "$pid"; wait "$pid" || true
  printf '%-9s %-16s %-12s %-10s %-12s %-12s %-14s %-36s\n' "$n" "$snap_s" "$fds" \
    "$(awk -v f="$fds" -v n="$n" 'BEGIN { printf "%.2f", f / n }')" "$rss" "$idle_rss" "$idle_pct" "$rescan"
  rm -rf "$d" "$work/replica-$n"
done
