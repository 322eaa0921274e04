#!/usr/bin/env bash
# Peak RSS of `walsync snapshot` on a large database, and the longest commit
# an application writer saw while the snapshot ran.
#   usage: scripts/snapshot-rss.sh [SIZE_MIB]   (default 2048)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}
cargo build --release --quiet
bin="$PWD/target/release/walsync"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/big.db"
echo "creating a ${size_mib} MiB database..."
python3 - "$db" "$size_mib" <<'PY'
import os, sqlite3, sys
db, mib = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)")
chunk = os.urandom(512) * 8          # 4 KiB, compressible about 8:1
for _ in range(mib // 16):
    c.executemany("INSERT INTO t(body) VALUES (?)", [(chunk,)] * 4096)
    c.commit()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
PY
ls -la "$db"
# A writer commits every 20 ms during the snapshot and reports its slowest commit.
python3 - "$db" > "$work/writer.txt" <<'PY' &
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=30)
# NORMAL: no fsync per commit, so the figure shows lock waits, not disk load.
c.execute("PRAGMA synchronous=NORMAL")
worst, n, end = 0.0, 0, time.time() + 600
while time.time() < end:
    t = time.perf_counter()
    c.execute("INSERT INTO t(body) VALUES (x'00')"); c.commit()
    worst = max(worst, time.perf_counter() - t); n += 1
    try:
        open(sys.argv[1] + ".stop").close(); break
    except FileNotFoundError:
        time.sleep(0.02)
print(f"{n} {worst*1000:.1f}")
PY
writer=$!
sleep 1
start=$(date +%s.%N)
"$bin" snapshot "$db" -b "file://$work/replica" &
pid=$!
hwm=0
while kill -0 "$pid" 2>/dev/null; do
  v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
  sleep 0.1
done
wait "$pid"
end=$(date +%s.%N)
touch "$db.stop"; wait "$writer"
read -r commits worst < "$work/writer.txt"
printf 'snapshot of %s MiB: %.1f s, peak RSS %s KiB; writer: %s commits, slowest %s ms\n' \
  "$size_mib" "$(echo "$end - $start" | bc)" "$hwm" "$commits" "$worst"
