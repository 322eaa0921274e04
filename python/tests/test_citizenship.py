"""The package inside an interpreter: Ctrl-C interrupts a long restore
promptly and leaves nothing behind; in-app replication with a writer thread
loses nothing; many objects and 50 watch/stop cycles leak no threads,
descriptors or processes; the console script is the command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import walsync
from walsync import WalSync
from conftest import make_db, rows_of, with_rows


class SlowRelay:
    """A TCP relay that passes at most `rate` bytes a second each way, so a
    restore from s3s-fs takes long enough to be interrupted mid-way."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        chunk = max(1, self.rate // 20)
        try:
            while data := src.recv(chunk):
                dst.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_ctrl_c_during_a_restore_raises_promptly_and_leaves_nothing(tmp_path, s3_env):
    db = make_db(tmp_path / "big.db", rows=0)
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(id, v) VALUES (?, ?)", [(i, os.urandom(2000).hex()) for i in range(4000)])
    db.execute("COMMIT")  # about 16 MB that does not compress
    fast = WalSync("s3://bucket/big", endpoint=s3_env.endpoint)
    fast.snapshot(tmp_path / "big.db")
    relay = SlowRelay(s3_env.endpoint, rate=4 * 1024 * 1024)  # 4+ s for the download
    out = tmp_path / "restore-here"
    out.mkdir()
    signalled = []

    def interrupt_once_writing() -> None:
        deadline = time.monotonic() + 30
        while not any(out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    slow = WalSync("s3://bucket/big", endpoint=relay.endpoint)
    timer = threading.Thread(target=interrupt_once_writing)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            slow.restore("big", out / "big.db", parallelism=1)
        raised = time.monotonic()
    finally:
        timer.join()
        relay.close()
    assert signalled, "the restore wrote nothing within 30 s"
    assert raised - signalled[0] < 2.0, f"KeyboardInterrupt came {raised - signalled[0]:.1f} s after the signal"
    assert list(out.iterdir()) == [], "the interrupted restore left files behind"
    # And a restore afterwards is whole.
    fast.restore("big", out / "big.db")
    assert rows_of(out / "big.db") == rows_of(tmp_path / "big.db")


def test_watch_in_app_with_a_writer_thread_loses_nothing(tmp_path):
    db = make_db(tmp_path / "app.db", rows=10)
    ws = WalSync(f"file://{tmp_path}/replica")
    handle = ws.watch([tmp_path / "app.db"], sync_interval=0.05)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            with_rows(db, 3)
            time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(2)
    stop.set()
    thread.join()
    with_rows(db, 1)  # the last commit, just before stop
    handle.stop()  # ships what is committed
    assert not handle.running
    ws.restore("app", tmp_path / "restored.db")
    expected = rows_of(tmp_path / "app.db")
    assert len(expected) > 100
    assert rows_of(tmp_path / "restored.db") == expected


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children() -> int:
    me = str(os.getpid())
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            count += 1
    return count


def test_fifty_watch_stop_cycles_and_many_objects_leak_nothing(tmp_path):
    db = make_db(tmp_path / "app.db", rows=5)
    url = f"file://{tmp_path}/replica"
    ws = WalSync(url)
    # Warm up: the first calls start the log forwarder thread (one per process).
    with ws.watch([tmp_path / "app.db"]):
        pass
    ws.list()
    before = (_threads(), _descriptors(), _children())
    for i in range(50):
        with WalSync(url).watch([tmp_path / "app.db"], sync_interval=0.02):
            with_rows(db, 1)
    for _ in range(200):
        WalSync(url).list()
    after = (_threads(), _descriptors(), _children())
    assert after == before, f"(threads, descriptors, child processes) {before} -> {after}"
    ws.restore("app", tmp_path / "restored.db")
    assert rows_of(tmp_path / "restored.db") == rows_of(tmp_path / "app.db")


def test_the_console_script_is_the_command(tmp_path):
    walsync_cmd = Path(sys.executable).with_name("walsync")
    version = subprocess.run([walsync_cmd, "version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith(f"walsync {walsync.__version__}")
    usage = subprocess.run([walsync_cmd, "restore"], capture_output=True, text=True)
    assert usage.returncode == 2
    importing = subprocess.run([sys.executable, "-c", "from walsync import WalSync"], capture_output=True, cwd=tmp_path)
    assert importing.returncode == 0


def test_a_snapshot_beside_an_open_connection_leaves_its_wal_alone(tmp_path):
    """Two copies of SQLite in one process break SQLite's locking: taken in
    the application's process, a snapshot's closing connection found no
    other (the application's locks are the same process's), checkpointed
    and deleted the WAL under the application's open connection, whose
    next commits went to the deleted file and were never replicated."""
    db = make_db(tmp_path / "app.db", rows=10)
    ws = WalSync(f"file://{tmp_path}/replica")
    ws.snapshot(tmp_path / "app.db")
    with_rows(db, 20)  # the application writes on through its connection
    assert (tmp_path / "app.db-wal").exists()
    with ws.watch([tmp_path / "app.db"], sync_interval=0.05):
        with_rows(db, 5)
        time.sleep(0.3)
    ws.restore("app", tmp_path / "restored.db")
    assert len(rows_of(tmp_path / "restored.db")) == 35


def test_an_application_killed_with_sigkill_loses_nothing_committed(tmp_path):
    """The worker sees its input close when the application dies, however
    it dies, and ships what is committed before it exits."""
    script = tmp_path / "app.py"
    script.write_text(
        f"""
import sqlite3, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_db, with_rows
from walsync import WalSync
db = make_db({str(tmp_path / 'app.db')!r}, rows=5)
handle = WalSync({f'file://{tmp_path}/replica'!r}).watch([{str(tmp_path / 'app.db')!r}], sync_interval=3600)
for _ in range(40):
    with_rows(db, 1)
print(handle._worker._proc.pid, flush=True)
time.sleep(60)
"""
    )
    app = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    worker = int(app.stdout.readline())
    app.kill()
    app.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and "zombie" not in Path(f"/proc/{worker}/status").read_text():
        assert time.monotonic() < deadline, "the worker outlived its application by 30 s"
        time.sleep(0.05)
    WalSync(f"file://{tmp_path}/replica").restore("app", tmp_path / "restored.db")
    assert len(rows_of(tmp_path / "restored.db")) == 45


def test_replies_stay_in_step_after_an_unread_answer(tmp_path):
    """A KeyboardInterrupt while a request waits leaves its answer unread;
    the next request must still get its own answer, not that one."""
    make_db(tmp_path / "app.db")
    with WalSync(f"file://{tmp_path}/replica").watch([tmp_path / "app.db"]) as handle:
        worker = handle._worker
        worker._requests += 1
        worker._send({"id": worker._requests, "request": "running"})  # never read
        [status] = handle.status()
        assert status.name == "app"
        assert handle.running is True


def test_a_forked_child_leaves_its_parents_worker_alone(tmp_path):
    """Pre-forking servers (gunicorn --preload) fork after the application
    started a watch: the child must neither stop it nor read its replies."""
    db = make_db(tmp_path / "app.db")
    ws = WalSync(f"file://{tmp_path}/replica")
    with ws.watch([tmp_path / "app.db"], sync_interval=0.05) as handle:
        pid = os.fork()
        if pid == 0:  # the child: what its exit would run
            try:
                walsync._stop_all()
                handle.stop()
            finally:
                os._exit(0)
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "the forked child hung at exit"
            time.sleep(0.01)
        assert handle.running
        with_rows(db, 3)
        assert handle.status()[0].name == "app"
    ws.restore("app", tmp_path / "restored.db")
    assert rows_of(tmp_path / "restored.db") == rows_of(tmp_path / "app.db")
