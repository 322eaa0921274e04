#!/usr/bin/env python3
"""Crash tests for walsync: replicate real SQLite databases while things go
wrong, then restore and compare row by row.

usage: chaos.py [--short] [--s3] [--part NAME]... [--faults] [--seed N] [--keep] [-v]
       (scripts/chaos.sh is the entry point: it finds or builds the binary)

The binary is $WALSYNC_BIN (default target/release/walsync). Each part runs
in its own temporary folder with its own replica (file://, or with --s3 a
prefix of a bucket served by a local s3s-fs):

  kill9    two writer processes commit continuously (small inserts, updates
           and deletes, occasional multi-MB blobs, and their own PASSIVE,
           RESTART and TRUNCATE checkpoints) while `walsync watch` is started
           and killed with SIGKILL after 100-1500 ms, hundreds of times
           (about 25 with --short); sometimes it stays down for a while, so
           the application's checkpoints restart the WAL behind its back.
  appkill  the application is killed with SIGKILL in the middle of a
           transaction whose pages already spilled into the WAL; committed
           transactions must all reach the replica, the killed ones never.
  replace  the application swaps in a `VACUUM INTO` copy of its database,
           deleting (a) or keeping (b) the -wal and -shm files, then writes on.
  vacuum   `VACUUM` in place every few seconds while writing (and a few
           kills of walsync).

Fault parts (only with --part NAME or --faults; about 30 s each with
--short, a few minutes each in full). faults-* always replicate to their own
s3s-fs, with scripts/faultproxy.py in front of it (faults: reset, 5xx,
slowdown, truncate, delay; see that file):

  faults-write  two writers commit while `watch` replicates through the
           proxy at 30 % faults of every kind on every method (delays
           0.5-2 s, 2-10 s in full; a PUT's answer has no body to truncate,
           so truncate becomes another kind there) for 12 s (150 s in full),
           then a total outage (connections refused) of 5 s (20 s), then no
           faults; SIGINT must exit 0 and restores (straight from s3s-fs)
           must equal the source. The summary gives how
           long after the outage each replica caught up: the first time
           `walsync list --json` (polled every ~0.3 s, directly) showed a
           TXID holding the commit the source had when the outage ended
           (that TXID is found afterwards by bisecting restores). Measured,
           not asserted.
  faults-read   a replica of about 300 files (small commits, 20 ms sync),
           then restores (3, 10 in full) and `verify` runs (2, 5) through the
           proxy at 30 % faults of every kind on GET, truncated bodies
           included (delays 0.5-2 s, 2-10 s in full). Every restore must
           succeed with the bytes of a direct restore and leave nothing else
           in its folder; verify must exit 0 or 4, never 5 (the replica is
           healthy). Then restores at 100 % failing faults (every GET; LTX
           GETs only) must exit 4 and leave no output and no temp file.
  disk-full     (a) walsync's local state folder (.DB-walsync) on an 8 MB
           tmpfs, (a') the database, its WAL and the state on one 6 MB tmpfs
           (the writer counts commits SQLite refuses as full and carries
           on): each filled up by a filler file for 5 s (30 s in full, with a
           kill -9 and restart of watch while full) under writes, then freed;
           everything committed must ship (SIGINT exits 0, restores equal).
           (b) a restore into a tmpfs a quarter of the database's size must
           fail naming the database and leave nothing behind (its exit code
           and message are printed). Needs root (mount -t tmpfs); without it
           the part fails saying so.

Every commit is identifiable. The application's transactions all update
`meta(n, digest)`: the commit number and a digest of every data row after the
transaction (XOR of per-row SHA-256, kept up to date incrementally). Once
COMMIT has returned, the writer appends "n digest" to its commit log. A
restored database is a committed state when its rows hash to its meta digest
and the log holds that digest for its commit number.

Checks at the end of each part (writers stopped, `watch` restarted and
stopped with SIGINT, which must exit 0):
  - the latest restore equals the source, table by table and row by row, and
    holds the last logged commit;
  - restores at random TXIDs (every TXID for `replace`) pass
    `PRAGMA integrity_check` and equal exactly one committed state, and their
    commit numbers never decrease as the TXID grows;
  - `walsync verify` exits 0.

Restart uploads: when walsync cannot follow the WAL after a restart it logs
  walsync: NAME: CAUSE; shipping the P changed pages of D as TXID T (B bytes)
  walsync: NAME: CAUSE; shipping a full copy (D pages) as TXID T (B bytes)
The summaries add these up against the database size (binaries that print
other text count 0; their full-copy messages are counted as "old-style").

Each part prints one summary line; problems are printed as they are found and
make the exit status 1.
"""

import argparse
import ctypes
import hashlib
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faultproxy import FaultProxy  # noqa: E402  (scripts/faultproxy.py)

# --------------------------------------------------------------------------
# Settings per mode

SHORT = {
    "kill9": dict(kills=30, random_restores=4, blob_mb=(1, 3), blob_budget_mb=7, timeout=240),
    "appkill": dict(kills=12, random_restores=6, timeout=180),
    "replace": dict(rounds_per_variant=3, rows=40, timeout=180),
    "vacuum": dict(seconds=20, kills=3, random_restores=6, timeout=180),
    "faults-write": dict(fault_seconds=12, outage_seconds=5, clean_seconds=8, delay=(0.5, 2.0), blob_mb=(0.2, 0.6),
                         blob_budget_mb=2, random_restores=3, timeout=240),
    "faults-read": dict(files=300, restores=3, verifies=2, delay=(0.5, 2.0), timeout=300),
    "disk-full": dict(warm=1.5, full_seconds=5, after_seconds=3, kill_while_full=False,
                      random_restores=3, timeout=240),
}
FULL = {
    "kill9": dict(kills=300, random_restores=12, blob_mb=(2, 8), blob_budget_mb=16, timeout=1800),
    "appkill": dict(kills=30, random_restores=15, timeout=900),
    "replace": dict(rounds_per_variant=6, rows=40, timeout=900),
    "vacuum": dict(seconds=120, kills=12, random_restores=15, timeout=900),
    "faults-write": dict(fault_seconds=150, outage_seconds=20, clean_seconds=40, delay=(2.0, 10.0), blob_mb=(0.5, 2),
                         blob_budget_mb=6, random_restores=8, timeout=1200),
    "faults-read": dict(files=300, restores=10, verifies=5, delay=(2.0, 10.0), timeout=1800),
    "disk-full": dict(warm=3, full_seconds=30, after_seconds=5, kill_while_full=True,
                      random_restores=8, timeout=900),
}
PART_NAMES = ["kill9", "appkill", "replace", "vacuum"]
# Run with --part NAME or --faults; not (yet) part of the default runs.
FAULT_PART_NAMES = ["faults-write", "faults-read", "disk-full"]

SYNC_INTERVAL = "100ms"
MIN_CHECKPOINT_PAGES = "200"

# The application's writing profiles (see Writer). Times are in seconds.
WRITER_PROFILES = {
    # Big blobs, application checkpoints of every kind.
    "heavy": dict(max_items=20000, passive_every=(0.2, 0.6), hard_every=(0.8, 2.5),
                  blob_every=(1.5, 4.0), pause=(0.001, 0.004)),
    # Small fast commits and frequent hard checkpoints.
    "light": dict(max_items=8000, passive_every=(0.3, 0.8), hard_every=(0.4, 1.5),
                  pause=(0.001, 0.004)),
    # Transactions killed while open (pages spilled into the WAL).
    "appkill": dict(max_items=8000, passive_every=(0.3, 0.8), hard_every=(1.0, 3.0),
                    doomed_after=(0.3, 1.2), doomed_kb=(400, 1600), cache_pages=64,
                    pause=(0.001, 0.004)),
    # VACUUM in place every few seconds, medium blobs.
    "vacuum": dict(max_items=6000, passive_every=(0.3, 0.8), blob_every=(0.8, 2.0),
                   blob_mb=(0.1, 1.0), blob_budget_mb=4, vacuum_every=(2.0, 5.0),
                   pause=(0.001, 0.004)),
    # On a disk that fills up: a commit or checkpoint SQLite refuses as full is
    # counted (never logged as committed) and tried again.
    "diskfull": dict(max_items=3000, passive_every=(0.3, 0.8), hard_every=(0.8, 2.0),
                     pause=(0.002, 0.006), tolerate_full=True),
}

# --------------------------------------------------------------------------
# The application's database: every commit identifiable

SCHEMA = """
CREATE TABLE meta(k INTEGER PRIMARY KEY CHECK (k = 1), n INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE items(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX items_kind_n ON items(kind, n);
CREATE TABLE blobs(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, data BLOB NOT NULL);
"""
# The tables the digest covers, with their columns.
DATA_TABLES = {"items": "id, kind, n, body", "blobs": "id, tag, data"}
DOOMED = "doomed"  # kind of the rows of transactions that are killed, never committed


def row_hash(table, row):
    """128-bit hash of one row (the digest is the XOR over all rows)."""
    h = hashlib.sha256(table.encode())
    for v in row:
        if v is None:
            h.update(b"\0N")
        elif isinstance(v, int):
            h.update(b"\0I%d" % v)
        elif isinstance(v, float):
            h.update(b"\0F" + repr(v).encode())
        elif isinstance(v, str):
            b = v.encode()
            h.update(b"\0T%d:" % len(b))
            h.update(b)
        else:
            h.update(b"\0B%d:" % len(v))
            h.update(v)
    return int.from_bytes(h.digest()[:16], "big")


def rows_digest(conn):
    digest = 0
    for table, cols in DATA_TABLES.items():
        for row in conn.execute(f"SELECT {cols} FROM {table}"):
            digest ^= row_hash(table, row)
    return digest


def hex_digest(d):
    return f"{d:032x}"


def read_commit_log(path):
    """{commit number: digest hex} from a writer's commit log."""
    commits = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return commits
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 32:
            commits[int(parts[0])] = parts[1]
    return commits


class AppCorrupt(Exception):
    """The application's own database is not what it committed."""


def is_busy(e):
    text = str(e).lower()
    return "locked" in text or "busy" in text


def is_full(e):
    return "full" in str(e).lower()  # SQLITE_FULL: "database or disk is full"


class AppDb:
    """The application's connection. Each `commit` runs one transaction that
    also updates meta(n, digest), then logs "n digest" once COMMIT returned."""

    def __init__(self, path, log_path, busy_timeout=10.0, cache_pages=None):
        self.path = str(path)
        self.log_fd = None
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
        try:
            self._open(log_path, busy_timeout, cache_pages)
        except BaseException:
            self.close()
            raise

    def _open(self, log_path, busy_timeout, cache_pages):
        """Settings, then checks that the database holds what was committed."""
        self.busy_ms = int(busy_timeout * 1000)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if cache_pages:
            self.conn.execute(f"PRAGMA cache_size={cache_pages}")
        n, digest = self.conn.execute("SELECT n, digest FROM meta").fetchone()
        self.n, self.digest = n, int(digest, 16)
        actual = rows_digest(self.conn)
        if actual != self.digest:
            raise AppCorrupt(f"{self.path}: rows hash to {hex_digest(actual)}, meta of commit {n} says {digest}")
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        logged = read_commit_log(log_path).get(n)
        if logged is None:
            self._log()  # committed, but the process was killed before logging it
        elif logged != digest:
            raise AppCorrupt(f"{self.path}: commit {n} holds {digest}, the log says {logged}")

    @staticmethod
    def create(path, log_path):
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta VALUES (1, 0, ?)", (hex_digest(0),))
        conn.close()
        Path(log_path).write_text(f"0 {hex_digest(0)}\n")

    def _log(self):
        os.write(self.log_fd, f"{self.n} {hex_digest(self.digest)}\n".encode())

    def commit(self, change):
        """Runs change(conn) -> digest delta in one transaction, retrying on busy."""
        for attempt in range(20):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                digest = self.digest ^ change(self.conn)
                self.conn.execute("UPDATE meta SET n = ?, digest = ?", (self.n + 1, hex_digest(digest)))
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.OperationalError:
                        pass  # SQLite rolled back already (SQLITE_FULL may)
                if not is_busy(e):
                    raise
                time.sleep(0.05 * (attempt + 1))
                continue
            self.n, self.digest = self.n + 1, digest
            self._log()
            return
        raise RuntimeError(f"{self.path}: busy for too long")

    def checkpoint(self, mode, busy_ms=100):
        """PRAGMA wal_checkpoint(mode) with a short busy timeout; True if done
        (RESTART/TRUNCATE report busy while walsync holds its read lock)."""
        self.conn.execute(f"PRAGMA busy_timeout={busy_ms}")
        try:
            busy = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
        except sqlite3.OperationalError as e:
            if not is_busy(e):
                raise
            busy = 1
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")
        return busy == 0

    def vacuum(self):
        for attempt in range(20):
            try:
                self.conn.execute("VACUUM")
                return
            except sqlite3.OperationalError as e:
                if not is_busy(e):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def close(self):
        self.conn.close()
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None


# Changes: each runs inside the transaction and returns its digest delta.

def insert_items(conn, rng, count, kind="item"):
    delta = 0
    for _ in range(count):
        n = rng.randrange(1_000_000)
        body = rng.randbytes(rng.randint(10, 300)).hex()
        cur = conn.execute("INSERT INTO items(kind, n, body) VALUES (?, ?, ?)", (kind, n, body))
        delta ^= row_hash("items", (cur.lastrowid, kind, n, body))
    return delta


def random_items(conn, rng, count):
    lo, hi = conn.execute("SELECT min(id), max(id) FROM items").fetchone()
    if lo is None:
        return []
    start = rng.randint(lo, hi)
    return conn.execute("SELECT id, kind, n, body FROM items WHERE id >= ? ORDER BY id LIMIT ?",
                        (start, count)).fetchall()


def update_items(conn, rng, count):
    delta = 0
    for row in random_items(conn, rng, count):
        new = (row[0], row[1], row[2] + 1, row[3][: rng.randint(0, len(row[3]))] + rng.randbytes(8).hex())
        conn.execute("UPDATE items SET n = ?, body = ? WHERE id = ?", (new[2], new[3], row[0]))
        delta ^= row_hash("items", row) ^ row_hash("items", new)
    return delta


def delete_items(conn, rows):
    delta = 0
    for row in rows:
        conn.execute("DELETE FROM items WHERE id = ?", (row[0],))
        delta ^= row_hash("items", row)
    return delta


def trim_items(conn, max_items):
    """Deletes the oldest rows beyond max_items (keeps the database bounded)."""
    (count,) = conn.execute("SELECT count(*) FROM items").fetchone()
    if count <= max_items:
        return 0
    rows = conn.execute("SELECT id, kind, n, body FROM items ORDER BY id LIMIT ?",
                        (count - max_items + 200,)).fetchall()
    return delete_items(conn, rows)


def insert_blob(conn, rng, size, budget):
    """A multi-MB blob, half random and half compressible; the oldest blobs
    go in the same transaction while the total would exceed the budget."""
    delta = 0
    while True:
        (total,) = conn.execute("SELECT coalesce(sum(length(data)), 0) FROM blobs").fetchone()
        if total + size <= budget:
            break
        old = conn.execute("SELECT id, tag, data FROM blobs ORDER BY id LIMIT 1").fetchone()
        if old is None:
            break
        conn.execute("DELETE FROM blobs WHERE id = ?", (old[0],))
        delta ^= row_hash("blobs", old)
    half = size // 2
    data = rng.randbytes(half) + (b"walsync chaos " * (size // 14 + 1))[: size - half]
    tag = f"blob-{size}"
    cur = conn.execute("INSERT INTO blobs(tag, data) VALUES (?, ?)", (tag, data))
    return delta ^ row_hash("blobs", (cur.lastrowid, tag, data))


def small_change(rng, max_items):
    """One ordinary transaction's work: inserts, updates and deletes."""
    kind = rng.choices(["insert", "update", "delete", "mixed"], [45, 25, 10, 20])[0]

    def change(conn):
        delta = 0
        if kind in ("insert", "mixed"):
            delta ^= insert_items(conn, rng, rng.randint(1, 10))
        if kind in ("update", "mixed"):
            delta ^= update_items(conn, rng, rng.randint(1, 5))
        if kind in ("delete", "mixed"):
            delta ^= delete_items(conn, random_items(conn, rng, rng.randint(1, 4)))
        if rng.random() < 0.02:
            delta ^= trim_items(conn, max_items)
        return delta

    return change


# --------------------------------------------------------------------------
# The writer process (`chaos.py _writer`): the application

class Every:
    """A recurring event at random intervals."""

    def __init__(self, rng, interval):
        self.rng, self.interval = rng, interval
        self.due = time.monotonic() + (rng.uniform(*interval) if interval else float("inf"))

    def fire(self):
        if time.monotonic() < self.due:
            return False
        self.due = time.monotonic() + self.rng.uniform(*self.interval)
        return True


def run_writer(db, log, profile_name, seed, blob_mb, blob_budget_mb):
    """Commits until SIGTERM. With a doomed_after profile, opens a transaction
    that spills into the WAL, prints DOOMED and waits to be killed."""
    profile = WRITER_PROFILES[profile_name]
    rng = random.Random(seed)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    app = AppDb(db, log, cache_pages=profile.get("cache_pages"))
    blob_mb = blob_mb or profile.get("blob_mb", (1, 2))
    budget = int((blob_budget_mb or profile.get("blob_budget_mb", 8)) * 1e6)
    passive = Every(rng, profile.get("passive_every"))
    hard = Every(rng, profile.get("hard_every"))
    blob = Every(rng, profile.get("blob_every"))
    vacuum = Every(rng, profile.get("vacuum_every"))
    doomed = Every(rng, profile.get("doomed_after"))
    counts = {"vacuums": 0, "checkpoints": 0, "checkpoints busy": 0}
    if profile.get("tolerate_full"):
        counts.update({"refused as full": 0, "checkpoints refused as full": 0})
    while not stop:
        if doomed.fire():
            doomed_transaction(app, rng, profile["doomed_kb"])
        if blob.fire():
            size = int(rng.uniform(*blob_mb) * 1e6)
            app.commit(lambda conn: insert_blob(conn, rng, size, budget))
        try:
            app.commit(small_change(rng, profile["max_items"]))
        except sqlite3.OperationalError as e:
            if not (profile.get("tolerate_full") and is_full(e)):
                raise
            counts["refused as full"] += 1
            time.sleep(0.05)
            continue
        if vacuum.fire():
            app.vacuum()
            counts["vacuums"] += 1
        modes = ["PASSIVE"] if passive.fire() else []
        if hard.fire():
            modes.append(rng.choice(["RESTART", "TRUNCATE"]))
        for mode in modes:
            counts["checkpoints"] += 1
            try:
                counts["checkpoints busy"] += not app.checkpoint(mode)
            except sqlite3.OperationalError as e:
                if not (profile.get("tolerate_full") and is_full(e)):
                    raise
                counts["checkpoints refused as full"] += 1
        time.sleep(rng.uniform(*profile["pause"]))
    app.close()
    print("writer: " + json.dumps(counts), file=sys.stderr, flush=True)


def doomed_transaction(app, rng, size_kb):
    """Begins a transaction big enough to spill pages into the WAL, says so
    on stdout and sleeps until killed. It must never reach a replica."""
    wal = Path(app.path + "-wal")
    before = wal.stat().st_mtime_ns if wal.exists() else 0
    app.conn.execute("BEGIN IMMEDIATE")
    target = rng.randint(*size_kb) * 1000
    written = 0
    while written < target:
        body = rng.randbytes(1500).hex()
        app.conn.execute("INSERT INTO items(kind, n, body) VALUES (?, ?, ?)", (DOOMED, app.n + 1, body))
        written += len(body)
    app.conn.execute("UPDATE meta SET n = ?, digest = ?", (app.n + 1, "d" * 32))
    # Nothing else writes the WAL while this transaction holds the write lock.
    spilled = wal.exists() and wal.stat().st_mtime_ns != before
    print("DOOMED " + ("spilled" if spilled else "in-memory"), flush=True)
    time.sleep(3600)


# --------------------------------------------------------------------------
# Child processes: all killed when the harness exits

CHILDREN = set()
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the harness


def spawn(args, **kwargs):
    proc = subprocess.Popen([str(a) for a in args], preexec_fn=_die_with_parent, **kwargs)
    CHILDREN.add(proc)
    return proc


def kill_children():
    for proc in list(CHILDREN):
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        CHILDREN.discard(proc)


def tail(path, lines=3):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------
# walsync

# "restored NAME to TXID ..." or "walsync: NAME: restored to TXID ..."
RESTORED = re.compile(r"restored (?:\S+ )?to TXID (\S+)(?: committed at \S+)? \(([\d,]+) files?, ([\d,]+) bytes\)")
SHIPPING = re.compile(
    r"^(?:\S+ [A-Z]+ )?walsync: (?P<name>\S+): (?P<cause>.+); shipping "
    r"(?:the (?P<changed>[\d,]+) changed pages of (?P<pages>[\d,]+)|a full copy \((?P<full>[\d,]+) pages\))"
    r" as TXID (?P<txid>[0-9a-fA-Fx]+) \((?P<bytes>[\d,]+) bytes\)\s*$")
OLD_STYLE_FULL = re.compile(r"^(?:\S+ [A-Z]+ )?walsync: \S+: .*(shipping a full copy|taking a fresh snapshot)")


def parse_txid(text):
    if text.lower().startswith("0x"):
        return int(text, 16)
    return int(text, 16) if len(text) == 16 else int(text)


def number(text):
    return int(text.replace(",", ""))


@dataclass
class Restore:
    ok: bool
    rc: int
    stderr: str
    files: int = None  # None when stderr does not say
    bytes: int = None


class Walsync:
    def __init__(self, binary, url, env):
        self.binary, self.url, self.env = binary, url, env

    def run(self, *args, timeout=300):
        return subprocess.run([self.binary, *map(str, args), "-b", self.url], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def watch(self, dbs, log_path, extra=(), sync_interval=SYNC_INTERVAL):
        log = open(log_path, "w")
        try:
            return spawn([self.binary, "watch", *dbs, "-b", self.url, "--sync-interval", sync_interval,
                          *extra], env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        finally:
            log.close()

    def max_txids(self):
        """{name: newest TXID} from `walsync list --json`."""
        out = self.run("list", "--json")
        if out.returncode != 0:
            raise RuntimeError(f"walsync list exited {out.returncode}: {out.stderr.strip()}")
        return {e["name"]: int(e["txid"]) for e in json.loads(out.stdout)}

    def restore(self, name, output, txid=None):
        args = ["restore", name, "-o", output] + (["--txid", txid] if txid is not None else [])
        out = self.run(*args)
        result = Restore(out.returncode == 0, out.returncode, out.stderr.strip())
        m = RESTORED.search(out.stderr)
        if m:
            result.files, result.bytes = number(m.group(2)), number(m.group(3))
        return result

    def verify(self, name):
        return self.run("verify", name)


@dataclass
class RestartUploads:
    """What the watch logs say restarts uploaded."""
    diffs: int = 0
    full_copies: int = 0
    bytes: int = 0
    # Pages the diffs found changed (what a restart must ship at least).
    changed_pages: int = 0
    old_style_full: int = 0
    txids: dict = field(default_factory=dict)  # name -> [TXID]

    def scan(self, log_path):
        for line in Path(log_path).read_text(errors="replace").splitlines():
            m = SHIPPING.match(line)
            if m:
                self.bytes += number(m.group("bytes"))
                if m.group("full"):
                    self.full_copies += 1
                else:
                    self.diffs += 1
                    self.changed_pages += number(m.group("changed"))
                self.txids.setdefault(m.group("name"), []).append(parse_txid(m.group("txid")))
            elif OLD_STYLE_FULL.match(line):
                self.old_style_full += 1

    def describe(self, restarts, what, db_bytes, page_size=4096):
        old = f", old-style full-copy messages {self.old_style_full}" if self.old_style_full else ""
        changed = ""
        if self.diffs:
            changed_bytes = self.changed_pages * page_size
            changed = (f", {self.changed_pages:,} pages changed = {mb(changed_bytes)}, "
                       f"uploaded/changed {self.bytes / max(changed_bytes, 1):.2f}")
        return (f"restart uploads {mb(self.bytes)} over {restarts} {what} "
                f"(diffs {self.diffs}{changed}, full copies {self.full_copies}{old}; database {mb(db_bytes)})")


def mb(n):
    """Bytes as MB (KB below 1 MB, where 0.0 MB would hide a small upload)."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 or n == 0 else f"{n / 1e3:.1f} KB"


# --------------------------------------------------------------------------
# Checking restored databases

class Mismatch(Exception):
    pass


def open_db(path):
    return sqlite3.connect(str(path), isolation_level=None)


def integrity(conn):
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    return "ok" if rows == ["ok"] else "; ".join(rows[:3])


def check_committed_state(path, commits):
    """The commit number of a restored database that must be exactly one
    committed state; raises Mismatch otherwise."""
    conn = open_db(path)
    try:
        status = integrity(conn)
        if status != "ok":
            raise Mismatch(f"integrity_check: {status}")
        n, digest = conn.execute("SELECT n, digest FROM meta").fetchone()
        actual = hex_digest(rows_digest(conn))
        (doomed,) = conn.execute("SELECT count(*) FROM items WHERE kind = ?", (DOOMED,)).fetchone()
    except sqlite3.DatabaseError as e:
        raise Mismatch(f"unreadable: {e}")
    finally:
        conn.close()
    if doomed:
        raise Mismatch(f"holds {doomed} rows of a transaction that was killed before COMMIT")
    if n not in commits:
        raise Mismatch(f"says commit {n}, which the application never logged")
    if actual != commits[n]:
        raise Mismatch(f"says commit {n} but its rows differ from what was committed "
                       f"(digest {actual}, committed {commits[n]}, meta {digest})")
    return n


def compare_databases(source, restored):
    """Differences between two databases, schema then every table row by row."""
    a, b = open_db(source), open_db(restored)
    try:
        status = integrity(b)
        if status != "ok":
            return [f"integrity_check of the restore: {status}"]
        schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
        if a.execute(schema).fetchall() != b.execute(schema).fetchall():
            return ["schemas differ"]
        diffs = []
        tables = [r[0] for r in a.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            rows_a = a.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid")
            rows_b = b.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid")
            count = 0
            while True:
                ra, rb = rows_a.fetchone(), rows_b.fetchone()
                if ra is None and rb is None:
                    break
                if ra != rb:
                    where = (ra or rb)[0]
                    what = "missing" if rb is None else "extra" if ra is None else "differs"
                    diffs.append(f"{table} row {where} {what} (after {count} equal rows)")
                    break
                count += 1
        return diffs
    finally:
        a.close()
        b.close()


def db_size(path):
    """The database's size in bytes (the file's when SQLite cannot read it)."""
    conn = open_db(path)
    try:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
        return pages * size
    except sqlite3.DatabaseError:
        return os.path.getsize(path)
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Parts

class PartTimeout(Exception):
    pass


@dataclass
class AppFiles:
    name: str
    path: Path
    log: Path

    @property
    def commits(self):
        return read_commit_log(self.log)


class Part:
    """One part's folder, replica, processes and problems."""

    MAX_PRINTED = 12

    def __init__(self, name, settings, walsync_for, root, rng, verbose):
        self.name, self.settings, self.rng, self.verbose = name, settings, rng, verbose
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.walsync = walsync_for(name, self.dir)
        self.problems = []
        self.watch_logs = []
        self.writers = {}  # AppFiles.name -> (Popen, log path)
        self.restores_equal = 0
        self.restores_done = 0

    # -- reporting

    def problem(self, message):
        self.problems.append(message)
        if len(self.problems) <= self.MAX_PRINTED:
            print(f"chaos {self.name}: PROBLEM: {message}", flush=True)
        elif len(self.problems) == self.MAX_PRINTED + 1:
            print(f"chaos {self.name}: (further problems are counted, not printed)", flush=True)

    def say(self, message):
        if self.verbose:
            print(f"  [{self.name}] {message}", file=sys.stderr, flush=True)

    # -- the application

    def new_app(self, name):
        app = AppFiles(name, self.dir / f"{name}.db", self.dir / f"{name}.commits")
        AppDb.create(app.path, app.log)
        return app

    def start_writer(self, app, profile, blob_mb=None, blob_budget_mb=None, stdout=subprocess.DEVNULL):
        log = self.dir / f"writer-{app.name}.log"
        args = [sys.executable, Path(__file__).resolve(), "_writer", app.path, app.log, profile,
                self.rng.randrange(2**32)]
        if blob_mb:
            args += ["--blob-mb", f"{blob_mb[0]},{blob_mb[1]}", "--blob-budget-mb", blob_budget_mb]
        with open(log, "a") as err:
            proc = spawn(args, stdout=stdout, stderr=err)
        self.writers[app.name] = (proc, log)
        return proc

    def writers_alive(self):
        """False (and a problem) when a writer exited by itself."""
        for name, (proc, log) in self.writers.items():
            if proc.poll() is not None:
                self.problem(f"the writer of {name}.db exited with code {proc.returncode}: {tail(log)}")
                return False
        return True

    def stop_writers(self):
        """SIGTERM: each writer finishes its transaction and exits 0."""
        for name, (proc, log) in self.writers.items():
            if proc.poll() is not None:
                continue  # died earlier: writers_alive reported it
            proc.terminate()
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "none (killed after 60 s)"
            if rc != 0:
                self.problem(f"the writer of {name}.db exited with code {rc} on SIGTERM: {tail(log)}")
        self.writers = {}

    # -- walsync watch

    def start_watch(self, apps, extra=(), walsync=None, sync_interval=SYNC_INTERVAL):
        log = self.dir / f"watch-{len(self.watch_logs) + 1:04d}.log"
        self.watch_logs.append(log)
        return (walsync or self.walsync).watch([a.path for a in apps], log, extra, sync_interval)

    def watch_log(self):
        return self.watch_logs[-1]

    def wait_until_watching(self, proc, timeout=120):
        """Waits for the "watching" line (SIGINT before it would kill walsync)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "walsync: watching" in Path(self.watch_log()).read_text(errors="replace"):
                return True
            if proc.poll() is not None:
                self.problem(f"watch exited with code {proc.returncode} at start: {tail(self.watch_log())}")
                return False
            time.sleep(0.05)
        self.problem(f"watch did not start within {timeout} s: {tail(self.watch_log())}")
        return False

    def check_watch_alive(self, proc):
        if proc.poll() is not None:
            self.problem(f"watch exited by itself with code {proc.returncode}: {tail(self.watch_log())}")
            return False
        return True

    def kill9(self, proc):
        proc.kill()
        proc.wait()
        CHILDREN.discard(proc)

    def stop_watch(self, proc, timeout=90):
        """SIGINT: walsync ships what is committed and must exit 0."""
        if not self.check_watch_alive(proc):
            return
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.problem(f"watch did not stop within {timeout} s of SIGINT: {tail(self.watch_log())}")
            return
        CHILDREN.discard(proc)
        if rc != 0:
            self.problem(f"watch exited with code {rc} after SIGINT (0 expected): {tail(self.watch_log())}")

    def final_watch_run(self, apps, settle=1.0):
        """Starts watch once more, lets it catch up and stops it with SIGINT."""
        proc = self.start_watch(apps, ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES])
        if self.wait_until_watching(proc):
            time.sleep(settle)
            self.stop_watch(proc)

    def restart_uploads(self):
        uploads = RestartUploads()
        for log in self.watch_logs:
            uploads.scan(log)
        return uploads

    # -- restores

    def restore_path(self, label):
        folder = self.dir / "restores" / label
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder / "restored.db"

    def check_latest(self, app):
        """Latest restore == source, row by row; returns the restore's stats."""
        self.restores_done += 1
        out = self.restore_path(f"{app.name}-latest")
        result = self.walsync.restore(app.name, out)
        if not result.ok:
            self.problem(f"latest restore of {app.name} failed (exit {result.rc}): {last_line(result.stderr)}")
            return result
        try:
            diffs = compare_databases(app.path, out)
            committed, source_n = max(app.commits), source_commit(app.path)
        except sqlite3.DatabaseError as e:
            self.problem(f"the source {app.name}.db itself cannot be read to compare: {e}")
            return result
        if source_n != committed:
            diffs.append(f"the source holds commit {source_n} but the last logged commit is {committed}")
        if diffs:
            self.problem(f"latest restore of {app.name} differs from the source: {'; '.join(diffs[:3])}")
        else:
            self.restores_equal += 1
            shutil.rmtree(out.parent)
        return result

    def check_txids(self, app, txids):
        """Restores at each TXID are committed states, in commit order."""
        commits = app.commits
        previous = (0, -1)
        failures = []  # (txid, reason), reported grouped by reason
        for txid in sorted(set(txids)):
            self.restores_done += 1
            out = self.restore_path(f"{app.name}-{txid}")
            result = self.walsync.restore(app.name, out, txid)
            if not result.ok:
                failures.append((txid, f"restore failed (exit {result.rc}): {last_line(result.stderr)}"))
                continue
            try:
                n = check_committed_state(out, commits)
            except Mismatch as e:
                failures.append((txid, str(e)))
                continue
            if n < previous[1]:
                failures.append((txid, f"holds commit {n}, but TXID {previous[0]} holds the later commit {previous[1]}"))
                continue
            previous = (txid, n)
            self.restores_equal += 1
            shutil.rmtree(out.parent)
        for txids, reason in group_failures(failures):
            self.problem(f"restore of {app.name} at TXID {txids}: {reason}")

    def random_txids(self, app, max_txid, count):
        """Random TXIDs, plus those the restart messages name (and the one before)."""
        picks = set(self.rng.sample(range(1, max_txid + 1), min(count, max_txid)))
        named = self.restart_uploads().txids.get(app.name, [])
        for t in self.rng.sample(named, min(3, len(named))):
            picks.update(x for x in (t - 1, t) if 1 <= x <= max_txid)
        return picks

    def check_replicas(self, apps, random_count=None, every_txid=False):
        """The end-of-part checks: latest, TXIDs, verify."""
        latest = {}
        for app in apps:
            latest[app.name] = self.check_latest(app)
        try:
            max_txids = self.walsync.max_txids()
        except RuntimeError as e:
            self.problem(str(e))
            return latest
        for app in apps:
            top = max_txids.get(app.name)
            if top is None:
                self.problem(f"walsync list does not show {app.name}")
                continue
            txids = range(1, top + 1) if every_txid else self.random_txids(app, top, random_count)
            self.check_txids(app, txids)
            out = self.walsync.verify(app.name)
            if out.returncode != 0:
                self.problem(f"walsync verify {app.name} exited {out.returncode}: "
                             f"{last_line(out.stdout + out.stderr)}")
        return latest

    def total_commits(self, apps):
        return sum(max(app.commits) for app in apps)

    def restores(self):
        if self.restores_equal == self.restores_done:
            return f"{self.restores_equal} restores equal"
        return f"{self.restores_equal} of {self.restores_done} restores equal"

    def summary(self, text):
        status = f"FAILED ({len(self.problems)} problems): " if self.problems else ""
        return f"chaos {self.name}: {status}{text}"


def group_failures(failures):
    """[(txid, reason)] -> [("2-9, 12", reason)], one entry per distinct reason."""
    by_reason = {}
    for txid, reason in failures:
        by_reason.setdefault(reason, []).append(txid)
    return [(txid_ranges(txids), reason) for reason, txids in by_reason.items()]


def txid_ranges(txids):
    ranges, start = [], None
    for i, t in enumerate(txids):
        if start is None:
            start = t
        if i + 1 == len(txids) or txids[i + 1] != t + 1:
            ranges.append(str(start) if start == t else f"{start}-{t}")
            start = None
    return ", ".join(ranges)


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else "(no output)"


def source_commit(path):
    conn = open_db(path)
    try:
        return conn.execute("SELECT n FROM meta").fetchone()[0]
    finally:
        conn.close()


# -- kill9

def part_kill9(part):
    s = part.settings
    apps = [part.new_app("app"), part.new_app("ledger")]
    part.start_writer(apps[0], "heavy", s["blob_mb"], s["blob_budget_mb"])
    part.start_writer(apps[1], "light")
    time.sleep(0.5)
    kills = downtimes = 0
    while kills < s["kills"] and part.writers_alive():
        extra = ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES]
        if part.rng.random() < 0.3:
            extra += ["--truncate-checkpoint-pages", "1000"]  # walsync's TRUNCATE gets interrupted too
        proc = part.start_watch(apps, extra)
        time.sleep(part.rng.uniform(0.1, 1.5))
        if not part.check_watch_alive(proc):
            break
        part.kill9(proc)
        kills += 1
        if part.rng.random() < 0.15:
            downtimes += 1
            time.sleep(part.rng.uniform(1.0, 3.0))  # the application's checkpoints restart the WAL
        else:
            time.sleep(part.rng.uniform(0.0, 0.1))
        if kills % 25 == 0:
            part.say(f"{kills} kills, {part.total_commits(apps):,} commits")
    part.stop_writers()
    part.final_watch_run(apps)
    latest = part.check_replicas(apps, random_count=s["random_restores"])
    size = sum(db_size(a.path) for a in apps)
    app_size = db_size(apps[0].path)
    read = latest.get("app")
    if not (read and read.ok):
        read_text = "latest restore of app failed"
    elif read.bytes is None:
        read_text = "latest restore of app: no (N files, B bytes) in its output"
    else:
        read_text = f"latest restore of app read {mb(read.bytes)} in {read.files} files (database {mb(app_size)})"
    return part.summary(
        f"{kills} kills ({downtimes} with walsync down 1-3 s), {part.total_commits(apps):,} commits, "
        f"{part.restores()}; {part.restart_uploads().describe(len(part.watch_logs) - 1, 'restarts', size)}; "
        f"{read_text}")


# -- appkill

def wait_for_line(proc, prefix, timeout):
    """Reads proc's stdout until a line starts with prefix; returns that line
    (None on timeout or exit)."""
    end = time.monotonic() + timeout
    buffer = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines(keepends=True):
                if line.startswith(prefix) and line.endswith("\n"):
                    return line.strip()
    return None


def part_appkill(part):
    s = part.settings
    app = part.new_app("app")
    watch = part.start_watch([app], ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES])
    if not part.wait_until_watching(watch):
        return part.summary("watch did not start")
    kills = spilled = 0
    while kills < s["kills"] and part.check_watch_alive(watch):
        writer = part.start_writer(app, "appkill", stdout=subprocess.PIPE)
        line = wait_for_line(writer, "DOOMED", timeout=60)
        if line is None:
            part.writers_alive()
            part.problem(f"the writer never opened its doomed transaction: {tail(part.writers['app'][1])}")
            break
        time.sleep(part.rng.uniform(0.0, 0.3))
        writer.kill()
        writer.wait()
        writer.stdout.close()
        CHILDREN.discard(writer)
        part.writers = {}
        kills += 1
        spilled += line.endswith("spilled")
    # One more clean run: the application recovers from the last kill.
    part.start_writer(app, "light")
    time.sleep(0.5)
    part.stop_writers()
    time.sleep(0.3)
    part.stop_watch(watch)
    part.check_replicas([app], random_count=s["random_restores"])
    return part.summary(
        f"{kills} application kills inside a transaction ({spilled} with its pages spilled into the WAL), "
        f"{part.total_commits([app]):,} commits, "
        f"{part.restores()}; {part.restart_uploads().describe(len(part.watch_logs) - 1, 'restarts', db_size(app.path))}")


# -- replace

def swap_in_vacuum_copy(app, db, keep_wal, rng):
    """The application replaces its database with a VACUUM INTO copy.

    Keeping -wal/-shm is only safe when the WAL the application leaves is
    empty. When another connection (walsync's, or any reader's) is open as
    the application closes, the application's close does not checkpoint and
    the WAL stays; once the file is renamed over, SQLite skips the
    checkpoint on close for every connection to the old file
    (SQLITE_FCNTL_HAS_MOVED), so the old frames stay for the next open of
    the new file to read. The part then reports that the application's own
    database broke."""
    db.commit(lambda conn: insert_items(conn, rng, 1, "before-swap"))
    backup = Path(f"{app.path}.bak")
    backup.unlink(missing_ok=True)
    db.conn.execute("VACUUM INTO ?", (str(backup),))
    db.close()
    os.replace(backup, app.path)
    if keep_wal:
        time.sleep(1.0)  # walsync lets go of the old file at its next poll
    else:
        for suffix in ("-wal", "-shm"):
            Path(f"{app.path}{suffix}").unlink(missing_ok=True)
    return AppDb(app.path, app.log)


def write_after_swap(db, rows, rng):
    truncate_at = rng.randrange(rows) if rng.random() < 0.5 else None
    for i in range(rows):
        db.commit(small_change(rng, 100_000) if rng.random() < 0.3
                  else (lambda conn: insert_items(conn, rng, 1, "after-swap")))
        if i == truncate_at:
            db.checkpoint("TRUNCATE")
        time.sleep(rng.uniform(0.005, 0.04))


def part_replace(part):
    s = part.settings
    app = part.new_app("app")
    db = AppDb(app.path, app.log)
    for _ in range(20):
        db.commit(small_change(part.rng, 100_000))
    watch = part.start_watch([app])
    if not part.wait_until_watching(watch):
        db.close()
        return part.summary("watch did not start")
    for _ in range(5):  # a few TXIDs before the first swap
        db.commit(small_change(part.rng, 100_000))
        time.sleep(0.15)
    variants = [False, True] * s["rounds_per_variant"]
    part.rng.shuffle(variants)
    swaps = {False: 0, True: 0}
    for number, keep_wal in enumerate(variants, 1):
        label = "keeping -wal/-shm" if keep_wal else "deleting -wal/-shm"
        swaps[keep_wal] += 1
        try:
            db = swap_in_vacuum_copy(app, db, keep_wal, part.rng)
            write_after_swap(db, s["rows"], part.rng)
        except (sqlite3.DatabaseError, AppCorrupt) as e:
            part.problem(f"swap {number} of {len(variants)} ({label}): the application's own database broke: {e}")
            break
        time.sleep(0.3)
        if not part.check_watch_alive(watch):
            break
    try:
        db.close()
    except sqlite3.Error:
        pass
    part.stop_watch(watch)
    part.check_replicas([app], every_txid=True)
    size = db_size(app.path)
    return part.summary(
        f"{swaps[False]} swaps deleting the WAL + {swaps[True]} keeping it, {part.total_commits([app]):,} commits, "
        f"{part.restores()} (every TXID); {part.restart_uploads().describe(sum(swaps.values()), 'swaps', size)}")


# -- vacuum

def part_vacuum(part):
    s = part.settings
    app = part.new_app("app")
    part.start_writer(app, "vacuum")
    extra = ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES]
    watch = part.start_watch([app], extra)
    kill_times = sorted(part.rng.uniform(1, s["seconds"] - 1) for _ in range(s["kills"]))
    start = time.monotonic()
    kills = 0
    for at in kill_times + [s["seconds"]]:
        time.sleep(max(0.0, start + at - time.monotonic()))
        if not (part.writers_alive() and part.check_watch_alive(watch)):
            break
        if kills < len(kill_times):
            part.kill9(watch)
            kills += 1
            time.sleep(part.rng.uniform(0.0, 1.5))
            watch = part.start_watch([app], extra)
    part.stop_writers()
    if watch.poll() is None and part.wait_until_watching(watch):
        time.sleep(0.5)
        part.stop_watch(watch)
    part.check_replicas([app], random_count=s["random_restores"])
    return part.summary(
        f"{s['seconds']} s of writes, {writer_counts(part.dir / 'writer-app.log').get('vacuums', 0)} VACUUMs, "
        f"{kills} kills of walsync, "
        f"{part.total_commits([app]):,} commits, {part.restores()}; "
        f"{part.restart_uploads().describe(kills, 'restarts', db_size(app.path))}")


def writer_counts(log):
    """The counters a writer prints at a clean exit ("writer: {json}")."""
    counts = {}
    for line in Path(log).read_text(errors="replace").splitlines():
        if line.startswith("writer: {"):
            for key, value in json.loads(line[len("writer: "):]).items():
                counts[key] = counts.get(key, 0) + value
    return counts


# -- the fault parts: a fault-injecting proxy in front of s3s-fs, full disks

class FaultRig:
    """The part's own s3s-fs (in its folder) and a FaultProxy in front of it.
    part.walsync goes to s3s-fs directly (the checks); rig.via goes through
    the proxy."""

    def __init__(self, part):
        try:
            env, base = start_s3_server(part.dir)
        except SystemExit as e:  # no s3s-fs: a failure of this part, not of the run
            raise RuntimeError(str(e))
        s3_port = int(env["AWS_ENDPOINT_URL_S3"].rsplit(":", 1)[1])
        self.log = open(part.dir / "faultproxy.log", "w")
        self.proxy = FaultProxy(("127.0.0.1", 0), ("127.0.0.1", s3_port), rate=0.0,
                                seed=part.rng.randrange(2**32), log=self.log).start()
        url = f"{base}/{part.name}"
        part.walsync = Walsync(part.walsync.binary, url, env)
        self.direct = part.walsync
        self.via = Walsync(part.walsync.binary, url,
                           dict(env, AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{self.proxy.port}"))

    def close(self):
        self.proxy.stop()
        self.log.close()


def fault_counts(stats):
    f = stats["faults"]
    return (f"{stats['requests']:,} requests, {stats['faults_total']:,} faults "
            f"(reset {f['reset']}, 5xx {f['5xx']}, slowdown {f['slowdown']}, truncate {f['truncate']}, "
            f"delay {f['delay']})")


def run_cmd(walsync, args, timeout):
    """(exit code or None on timeout, stderr+stdout, seconds)."""
    started = time.monotonic()
    try:
        out = subprocess.run([walsync.binary, *map(str, args), "-b", walsync.url], env=walsync.env,
                             capture_output=True, text=True, timeout=timeout)
        return out.returncode, (out.stderr + out.stdout).strip(), time.monotonic() - started
    except subprocess.TimeoutExpired as e:
        text = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, text.strip(), time.monotonic() - started


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def leftovers(folder, expected=()):
    """Names in folder other than the expected ones (temp files, partial output)."""
    try:
        return sorted(n for n in os.listdir(folder) if n not in expected)
    except FileNotFoundError:
        return []


def count_lines(logs, needle):
    n = 0
    first = None
    for log in logs:
        for line in Path(log).read_text(errors="replace").splitlines():
            if needle in line:
                n += 1
                first = first or line.strip()
    return n, first


def restored_commit(part, app, txid):
    """The commit number a restore at TXID holds (None and a problem if it fails)."""
    out = part.restore_path(f"{app.name}-probe-{txid}")
    result = part.walsync.restore(app.name, out, txid)
    if not result.ok:
        part.problem(f"restore of {app.name} at TXID {txid} failed (exit {result.rc}): {last_line(result.stderr)}")
        return None
    try:
        return source_commit(out)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def first_txid_holding(part, app, commit, lo, hi):
    """The smallest TXID in [lo, hi] whose restore holds `commit` or a later
    one (bisection by restores); None when hi does not hold it either."""
    lo = max(lo, 1)
    top = restored_commit(part, app, hi)
    if top is None or top < commit:
        return None
    low = restored_commit(part, app, lo)
    if low is None:
        return None
    if low >= commit:
        return lo
    while hi - lo > 1:  # lo holds less than commit, hi at least commit
        mid = (lo + hi) // 2
        n = restored_commit(part, app, mid)
        if n is None:
            return None
        if n >= commit:
            hi = mid
        else:
            lo = mid
    return hi


# -- faults-write

def part_faults_write(part):
    s = part.settings
    rig = FaultRig(part)
    try:
        return faults_write(part, rig, s)
    finally:
        rig.close()


def faults_write(part, rig, s):
    proxy = rig.proxy
    apps = [part.new_app("app"), part.new_app("ledger")]
    proxy.configure(mode="faults", rate=0.3, kinds="all", methods="", paths="", delay=s["delay"])
    part.start_writer(apps[0], "heavy", s["blob_mb"], s["blob_budget_mb"])
    part.start_writer(apps[1], "light")
    watch = part.start_watch(apps, ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES], walsync=rig.via)
    if not part.wait_until_watching(watch):
        return part.summary("watch did not start through the proxy")
    end = time.monotonic() + s["fault_seconds"]
    while time.monotonic() < end and part.writers_alive() and part.check_watch_alive(watch):
        time.sleep(0.5)
    during = proxy.stats()
    part.say(f"faults: {fault_counts(during)}")
    proxy.configure(mode="outage")
    end = time.monotonic() + s["outage_seconds"]
    while time.monotonic() < end and part.writers_alive() and part.check_watch_alive(watch):
        time.sleep(0.25)
    # Outage over, faults off: how long until the replica holds what was committed then?
    target = {app.name: max(app.commits) for app in apps}
    try:
        before = part.walsync.max_txids()
    except RuntimeError as e:
        part.problem(str(e))
        before = {}
    proxy.configure(mode="faults", rate=0.0)
    outage_end = time.monotonic()
    samples = []  # (seconds after the outage, {name: max TXID})
    while time.monotonic() < outage_end + s["clean_seconds"]:
        if not (part.writers_alive() and part.check_watch_alive(watch)):
            break
        try:
            txids = part.walsync.max_txids()
        except RuntimeError:
            txids = {}
        samples.append((time.monotonic() - outage_end, txids))
        time.sleep(0.25)
    stats = proxy.stats()
    part.stop_writers()
    time.sleep(0.5)
    part.stop_watch(watch)
    part.check_replicas(apps, random_count=s["random_restores"])
    catch_up = []
    for app in apps:
        last = samples[-1][1].get(app.name, 0) if samples else 0
        txid = first_txid_holding(part, app, target[app.name], before.get(app.name, 1), last) if last else None
        if txid is None:
            catch_up.append(f"{app.name} not within {s['clean_seconds']} s")
            continue
        at = next((t for t, txids in samples if txids.get(app.name, 0) >= txid), None)
        catch_up.append(f"{app.name} {at:.1f} s" if at is not None else f"{app.name} not within {s['clean_seconds']} s")
        part.say(f"{app.name}: commit {target[app.name]} is in TXID {txid} (TXID {before.get(app.name)} at the outage's end)")
    retries, _ = count_lines(part.watch_logs, "error")
    return part.summary(
        f"{s['fault_seconds']} s at 30 % faults of every kind on every method (delays {s['delay'][0]:g}-{s['delay'][1]:g} s) "
        f"+ {s['outage_seconds']} s outage, "
        f"{part.total_commits(apps):,} commits; proxy {fault_counts(during)} in the fault phase, "
        f"{stats['requests']:,} requests in all; watch logged {retries} errors; "
        f"caught up after the outage: {', '.join(catch_up)} (list polled every ~0.3 s); {part.restores()}")


# -- faults-read

def part_faults_read(part):
    s = part.settings
    rig = FaultRig(part)
    try:
        return faults_read(part, rig, s)
    finally:
        rig.close()


def faults_read(part, rig, s):
    proxy = rig.proxy
    app = part.new_app("app")
    # A replica of ~300 files: a snapshot of a few MB (blobs, half random),
    # then small commits synced every 20 ms, straight to s3s-fs.
    db = AppDb(app.path, app.log)
    try:
        for _ in range(s.get("blobs", 3)):
            size = int(part.rng.uniform(0.8, 1.2) * 1e6)
            db.commit(lambda conn: insert_blob(conn, part.rng, size, 8e6))
        for _ in range(100):
            db.commit(small_change(part.rng, 8000))
    finally:
        db.close()
    part.start_writer(app, "light")
    watch = part.start_watch([app], sync_interval="20ms")
    if not part.wait_until_watching(watch):
        return part.summary("watch did not start")
    files = 0
    deadline = time.monotonic() + 180
    while files < s["files"] and time.monotonic() < deadline:
        if not (part.writers_alive() and part.check_watch_alive(watch)):
            break
        time.sleep(0.5)
        out = part.walsync.run("list", "--json")
        if out.returncode == 0:
            files = sum(e["files"] for e in json.loads(out.stdout) if e["name"] == app.name)
    part.stop_writers()
    time.sleep(0.3)
    part.stop_watch(watch)
    out = part.walsync.run("list", "--json")
    listed = [e for e in json.loads(out.stdout) if e["name"] == app.name] if out.returncode == 0 else []
    files = listed[0]["files"] if listed else 0
    if files < s["files"]:
        part.problem(f"the replica holds {files} files, {s['files']} wanted")
    # The right bytes: a direct restore, equal to the source row by row.
    ref = part.restore_path("reference")
    direct = part.walsync.restore(app.name, ref)
    if not direct.ok:
        part.problem(f"direct restore failed (exit {direct.rc}): {last_line(direct.stderr)}")
        return part.summary("no reference restore")
    diffs = compare_databases(app.path, ref)
    if diffs:
        part.problem(f"direct restore differs from the source: {'; '.join(diffs[:3])}")
    ref_sha = file_sha256(ref)

    # 30 % faults of every kind on GET.
    proxy.reset_stats()
    proxy.configure(mode="faults", rate=0.3, kinds="all", methods="GET", paths="", delay=s["delay"])
    good, failed, seconds = 0, {}, []
    for i in range(s["restores"]):
        out = part.restore_path(f"proxied-{i + 1}")
        rc, text, took = run_cmd(rig.via, ["restore", app.name, "-o", out], timeout=600)
        seconds.append(took)
        if rc == 0:
            if not out.exists():
                part.problem(f"restore {i + 1} through the proxy exited 0 without writing {out}")
            elif file_sha256(out) != ref_sha:
                part.problem(f"restore {i + 1} through the proxy exited 0 with the wrong bytes "
                             f"(differs from the direct restore: {'; '.join(compare_databases(ref, out)[:2]) or 'same rows'})")
            else:
                good += 1
            extra = leftovers(out.parent, [out.name])
        else:
            failed[rc] = failed.get(rc, 0) + 1
            part.problem(f"restore {i + 1} of {s['restores']} through the proxy at 30 % GET faults "
                         f"exited {rc} after {took:.1f} s: {last_line(text)}")
            extra = leftovers(out.parent)
        if extra:
            part.problem(f"restore {i + 1} through the proxy (exit {rc}) left {', '.join(extra)} in {out.parent}")
        part.say(f"restore {i + 1}: exit {rc} in {took:.1f} s")
    verify_codes = {}
    for i in range(s["verifies"]):
        rc, text, took = run_cmd(rig.via, ["verify", app.name], timeout=600)
        verify_codes[rc] = verify_codes.get(rc, 0) + 1
        if rc not in (0, 4):
            part.problem(f"verify {i + 1} of {s['verifies']} of the healthy replica through the proxy "
                         f"exited {rc} (0 or 4 expected): {last_line(text)}")
        part.say(f"verify {i + 1}: exit {rc} in {took:.1f} s")
    stats = proxy.stats()

    # 100 % faults (every kind that fails a request): exit 4, nothing left behind.
    hundred = []
    for label, paths in (("every GET", ""), ("LTX GETs only", r"\.ltx")):
        proxy.configure(rate=1.0, kinds="reset,5xx,slowdown,truncate", methods="GET", paths=paths)
        out = part.restore_path(f"hundred-{len(hundred) + 1}")
        rc, text, took = run_cmd(rig.via, ["restore", app.name, "-o", out], timeout=900)
        extra = leftovers(out.parent)
        if rc != 4:
            part.problem(f"restore at 100 % faults on {label} exited {rc} after {took:.1f} s (4 expected): "
                         f"{last_line(text)}")
        if extra:
            part.problem(f"restore at 100 % faults on {label} (exit {rc}) left {', '.join(extra)} in {out.parent}")
        hundred.append(f"{label}: exit {rc} in {took:.0f} s{', leftovers' if extra else ''}")
        print(f"chaos {part.name}: restore at 100 % faults on {label}: exit {rc}: {last_line(text)}", flush=True)
    proxy.configure(rate=0.0)
    part.check_replicas([app], random_count=2)
    fails = ", ".join(f"exit {rc} x{n}" for rc, n in sorted(failed.items(), key=lambda x: str(x[0])))
    verifies = ", ".join(f"exit {rc} x{n}" for rc, n in sorted(verify_codes.items(), key=lambda x: str(x[0])))
    return part.summary(
        f"replica of {files} files; at 30 % GET faults of every kind: {good}/{s['restores']} restores "
        f"with the right bytes{f' (failed: {fails})' if fails else ''}, "
        f"{min(seconds):.1f}-{max(seconds):.1f} s each; verify {verifies}; proxy {fault_counts(stats)}; "
        f"at 100 %: {'; '.join(hundred)}; {part.restores()} (direct)")


# -- disk-full

MOUNTS = []


class MountError(Exception):
    pass


def mount_tmpfs(path, size_kb):
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MountError(f"needs root to mount tmpfs: {' '.join(cmd)} failed: {e} (uid {os.getuid()})")
    if out.returncode != 0:
        raise MountError(f"needs root to mount tmpfs: {' '.join(cmd)} exited {out.returncode}: "
                         f"{out.stderr.strip()} (uid {os.getuid()})")
    MOUNTS.append(path)


def unmount(path):
    if path not in MOUNTS:
        return
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    MOUNTS.remove(path)


def unmount_all():
    for path in list(MOUNTS):
        unmount(path)


def fill(folder):
    """A filler file that takes every free byte of folder's file system."""
    path = Path(folder) / "filler"
    written = 0
    block = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, block)
            except OSError:
                break
    finally:
        os.close(fd)
    return path, written


def record_usage(folder, path, label):
    """Appends the files under folder (with the disk's free space) to path."""
    st = os.statvfs(folder)
    lines = [f"== {label}: {folder}"]
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            f = Path(root) / name
            try:
                lines.append(f"{f.stat().st_size:>12,} {f.relative_to(folder)}")
            except FileNotFoundError:
                pass
    lines.append(f"free {mb(st.f_bavail * st.f_frsize)} of {mb(st.f_blocks * st.f_frsize)}; files: "
                 + ", ".join(l.split()[-1] + " " + mb(number(l.split()[0])) for l in lines[1:]))
    with open(path, "a") as out:
        out.write("\n".join(lines) + "\n")
    return lines[-1]


def part_disk_full(part):
    s = part.settings
    texts = []
    try:
        # (a) walsync's local state folder on an 8 MB tmpfs, the database beside it on disk.
        app = part.new_app("statedisk")
        state = part.dir / f".{app.path.name}-walsync"
        mount_tmpfs(state, 8 * 1024)
        texts.append("(a) state folder on an 8 MB tmpfs: " + fill_under_watch(part, app, state, s))
        unmount(state)
        # (a') the database, its WAL and walsync's state on one 6 MB tmpfs.
        folder = part.dir / "fulldisk"
        mount_tmpfs(folder, 6 * 1024)
        app2 = AppFiles("fulldisk", folder / "fulldisk.db", part.dir / "fulldisk.commits")
        AppDb.create(app2.path, app2.log)
        texts.append("(a') database and state on a 6 MB tmpfs: " + fill_under_watch(part, app2, folder, s))
        part.check_replicas([app, app2], random_count=s["random_restores"])
        unmount(folder)
        # (b) a restore into a folder too small for the database.
        out_dir = part.dir / "restore-out"
        small_kb = max(16, db_size(app.path) // 4096)  # a quarter of the database
        mount_tmpfs(out_dir, small_kb)
        out = out_dir / "restored.db"
        rc, text, took = run_cmd(part.walsync, ["restore", "statedisk", "-o", out], timeout=300)
        extra = leftovers(out_dir)
        message = last_line(text)
        if rc == 0:
            part.problem(f"restore into a {small_kb} KB tmpfs exited 0 for a {mb(db_size(app.path))} database")
        if extra:
            part.problem(f"restore into a full folder (exit {rc}) left {', '.join(extra)} in {out_dir}")
        if not re.search(r"\bstatedisk\b", text):
            part.problem(f"restore into a full folder (exit {rc}) does not name the database 'statedisk': {message}")
        print(f"chaos {part.name}: restore into a full folder: exit {rc}: {message}", flush=True)
        texts.append(f"(b) restore of {mb(db_size(app.path))} into a {small_kb} KB tmpfs: exit {rc}"
                     f"{', leftovers' if extra else ', nothing left'}")
        unmount(out_dir)
    except MountError as e:
        part.problem(str(e))
    finally:
        kill_children_of_part()  # nothing may hold files on a mount
        unmount_all()
    return part.summary(f"{'; '.join(texts)}; {part.restores()}")


def fill_under_watch(part, app, folder, s):
    """Writers and watch; the folder filled for a while, then freed; watch
    stopped with SIGINT. Returns the sub-part's text."""
    profile = "diskfull" if app.path.parent == folder else "light"
    part.start_writer(app, profile)
    first_log = len(part.watch_logs)
    watch = part.start_watch([app], ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES])
    if not part.wait_until_watching(watch):
        part.stop_writers()
        return "watch did not start"
    time.sleep(s["warm"])
    before = max(app.commits)
    filler, filled = fill(folder)
    end = time.monotonic() + s["full_seconds"]
    restarts, restart_exit = 0, []
    while time.monotonic() < end and part.writers_alive():
        if s["kill_while_full"] and restarts == 0 and time.monotonic() > end - s["full_seconds"] / 2:
            part.kill9(watch)  # a restart with the disk full
            restarts += 1
            watch = part.start_watch([app], ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES])
            time.sleep(1.0)
        if watch.poll() is not None:
            restart_exit.append(f"watch exited {watch.returncode} while the disk was full: {tail(part.watch_log(), 1)}")
            print(f"chaos {part.name}: {app.name}: {restart_exit[-1]}", flush=True)
            break
        time.sleep(0.25)
    during = max(app.commits) - before
    filler.unlink()
    if watch.poll() is not None:
        watch = part.start_watch([app], ["--min-checkpoint-pages", MIN_CHECKPOINT_PAGES])
        part.wait_until_watching(watch)
    time.sleep(s["after_seconds"])
    part.stop_writers()
    time.sleep(0.5)
    usage = record_usage(folder, part.dir / f"usage-{app.name}.txt", "before SIGINT")
    problems = len(part.problems)
    part.stop_watch(watch)
    if len(part.problems) > problems:
        record_usage(folder, part.dir / f"usage-{app.name}.txt", "after SIGINT")
        print(f"chaos {part.name}: {app.name}: before SIGINT, {usage}", flush=True)
    full_lines, example = count_lines(part.watch_logs[first_log:], "No space left")
    counts = writer_counts(part.dir / f"writer-{app.name}.log")
    refused = counts.get("refused as full", 0) + counts.get("checkpoints refused as full", 0)
    if example:
        print(f"chaos {part.name}: {app.name}: watch said, with the disk full: {example}", flush=True)
    return (f"{mb(filled)} filler for {s['full_seconds']} s, {during:,} commits while full"
            f"{f' ({refused} commits/checkpoints refused as full)' if profile == 'diskfull' else ''}, "
            f"{max(app.commits):,} in all, 'No space left' logged {full_lines} times"
            f"{f', watch killed and restarted while full' if restarts else ''}"
            f"{'; ' + '; '.join(restart_exit) if restart_exit else ''}")


PARTS = {"kill9": part_kill9, "appkill": part_appkill, "replace": part_replace, "vacuum": part_vacuum,
         "faults-write": part_faults_write, "faults-read": part_faults_read, "disk-full": part_disk_full}

# --------------------------------------------------------------------------
# Replicas: file:// or a local s3s-fs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server(root):
    """s3s-fs on a free port; returns (env, bucket URL base)."""
    binary = shutil.which("s3s-fs") or str(Path.home() / ".cargo/bin/s3s-fs")
    if not Path(binary).exists():
        raise SystemExit("chaos: --s3 needs s3s-fs (cargo install s3s-fs --features binary)")
    data = root / "s3"
    (data / "chaos").mkdir(parents=True)  # the bucket
    port = free_port()
    key, secret = "chaos" + secrets.token_hex(4), secrets.token_hex(16)
    log = open(root / "s3s-fs.log", "w")
    proc = spawn([binary, "--host", "127.0.0.1", "--port", port, "--access-key", key,
                  "--secret-key", secret, data], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"chaos: s3s-fs exited with code {proc.returncode}: {tail(root / 's3s-fs.log')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
               AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1")
    return env, "s3://chaos"


# --------------------------------------------------------------------------
# Main


def run_part(name, settings, walsync_for, root, rng, verbose):
    part = Part(name, settings, walsync_for, root, rng, verbose)
    started = time.monotonic()

    def on_alarm(*_):
        raise PartTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(settings["timeout"])
    try:
        line = PARTS[name](part)
    except PartTimeout:
        part.problem(f"timed out after {settings['timeout']} s (the part's global limit)")
        line = part.summary("timed out")
    except Exception as e:  # a harness error is a failure too, reported as such
        part.problem(f"the harness failed: {type(e).__name__}: {e}")
        line = part.summary("aborted")
    finally:
        signal.alarm(0)
        kill_children_of_part()
    print(f"{line}; {time.monotonic() - started:.0f} s", flush=True)
    return not part.problems


def kill_children_of_part():
    """Everything a part started ends with it (the S3 server is kept)."""
    for proc in list(CHILDREN):
        if proc is not S3_SERVER[0]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            CHILDREN.discard(proc)


S3_SERVER = [None]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="chaos.sh", description="Crash tests for walsync (see scripts/chaos.py).")
    p.add_argument("--short", action="store_true", help="about 2 minutes in all (the test script's run)")
    p.add_argument("--s3", action="store_true", help="replicate to a local s3s-fs instead of file://")
    p.add_argument("--part", action="append", choices=PART_NAMES + FAULT_PART_NAMES,
                   help="run only this part (repeatable)")
    p.add_argument("--faults", action="store_true",
                   help=f"run the fault parts ({', '.join(FAULT_PART_NAMES)}; with --part: as well)")
    p.add_argument("--seed", type=int, help="random seed (printed at the start)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders even when all passed")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return p.parse_args(argv)


def main(argv):
    if argv[:1] == ["_writer"]:
        return writer_main(argv[1:])
    args = parse_args(argv)
    binary = os.environ.get("WALSYNC_BIN", "target/release/walsync")
    binary = str(Path(binary).resolve())
    if not os.access(binary, os.X_OK):
        print(f"chaos: no walsync binary at {binary} (set WALSYNC_BIN)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    settings = SHORT if args.short else FULL
    names = (args.part or ([] if args.faults else PART_NAMES)) + (FAULT_PART_NAMES if args.faults else [])
    names = list(dict.fromkeys(names))
    root = Path(tempfile.mkdtemp(prefix="walsync-chaos-"))
    print(f"chaos: {'short' if args.short else 'full'} run of {', '.join(names)} with {binary}, "
          f"seed {seed}, {'s3' if args.s3 else 'file://'} replicas, in {root}", flush=True)

    if args.s3:
        env, base = start_s3_server(root)
        S3_SERVER[0] = next(iter(CHILDREN))
        walsync_for = lambda name, folder: Walsync(binary, f"{base}/{name}", env)
    else:
        walsync_for = lambda name, folder: Walsync(binary, f"file://{folder / 'replica'}", dict(os.environ))

    started = time.monotonic()
    failed = []
    for i, name in enumerate(names):
        rng = random.Random(seed + i)
        if not run_part(name, settings[name], walsync_for, root, rng, args.verbose):
            failed.append(name)
    kill_children()
    took = time.monotonic() - started
    if failed:
        print(f"chaos: FAILED: {', '.join(failed)} ({len(failed)} of {len(names)} parts) in {took:.0f} s; "
              f"seed {seed}; files kept in {root}", flush=True)
        return 1
    if args.keep:
        print(f"chaos: all {len(names)} parts passed in {took:.0f} s; files kept in {root}", flush=True)
    else:
        shutil.rmtree(root, ignore_errors=True)
        print(f"chaos: all {len(names)} parts passed in {took:.0f} s", flush=True)
    return 0


def writer_main(argv):
    p = argparse.ArgumentParser(prog="chaos.py _writer")
    p.add_argument("db")
    p.add_argument("log")
    p.add_argument("profile", choices=WRITER_PROFILES)
    p.add_argument("seed", type=int)
    p.add_argument("--blob-mb", type=lambda s: tuple(float(x) for x in s.split(",")))
    p.add_argument("--blob-budget-mb", type=float)
    a = p.parse_args(argv)
    run_writer(a.db, a.log, a.profile, a.seed, a.blob_mb, a.blob_budget_mb)
    return 0


def on_signal(signum, _frame):
    kill_children()
    unmount_all()
    print(f"chaos: interrupted by signal {signum}; child processes killed", file=sys.stderr, flush=True)
    os._exit(128 + signum)


if __name__ == "__main__":
    if sys.argv[1:2] != ["_writer"]:
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        _libc.prctl(1, signal.SIGTERM)  # chaos.sh killed with -9: clean up all the same
    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        if sys.argv[1:2] != ["_writer"]:
            kill_children()
            unmount_all()
