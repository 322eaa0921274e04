#!/usr/bin/env python3
"""Light writes on many SQLite databases, for the RSS and benchmark scripts.

usage: lightwriter.py create DIR N [PAGE_SIZE]
       lightwriter.py write DIR N SECONDS RATE_PER_DB_PER_SEC
"""
import os, random, sqlite3, sys, time

def path(d, i):
    return os.path.join(d, f"t{i:04d}", "app.db")

def create(d, n, page_size=4096):
    for i in range(n):
        p = path(d, i)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        c = sqlite3.connect(p)
        c.execute(f"PRAGMA page_size={page_size}")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body TEXT)")
        c.execute("INSERT INTO t(body) VALUES (?)", ("seed" * 50,))
        c.commit()
        c.close()

def write(d, n, seconds, rate):
    conns = []
    for i in range(n):
        c = sqlite3.connect(path(d, i), timeout=30)
        c.execute("PRAGMA busy_timeout=30000")
        conns.append(c)
    total_rate = max(rate * n, 1.0)
    gap = 1.0 / total_rate
    end = time.time() + seconds
    commits = 0
    while time.time() < end:
        c = random.choice(conns)
        c.execute("INSERT INTO t(body) VALUES (?)", (os.urandom(100).hex(),))
        c.commit()
        commits += 1
        time.sleep(gap)
    for c in conns:
        c.close()
    print(commits)

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "create":
        create(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 4096)
    else:
        write(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
