"""Fixtures of the Python package's tests: real SQLite databases, a real
S3 server that checks SigV4 signatures (s3s-fs on a loopback port, as the
Rust tests use), and the package as pip installed it. A missing tool fails
the tests with instructions; nothing is skipped."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

INSTALL_HINT = "run scripts/test.sh, which installs the test tools (s3s-fs, the package)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """s3s-fs on a loopback port, with its own keys and one bucket."""

    def __init__(self, root: Path) -> None:
        binary = os.environ.get("S3S_FS_BIN") or shutil.which("s3s-fs")
        if not binary:
            pytest.fail(f"s3s-fs not found on PATH or in S3S_FS_BIN: {INSTALL_HINT}")
        self.access_key = f"walsync-py-key-{os.getpid()}"
        self.secret_key = f"walsync-py-secret-{os.getpid()}-0123456789"
        self.root = root
        (root / "bucket").mkdir(parents=True)
        for _ in range(5):
            port = _free_port()
            self.proc = subprocess.Popen(
                [binary, "--host", "127.0.0.1", "--port", str(port),
                 "--access-key", self.access_key, "--secret-key", self.secret_key, str(root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    self.endpoint = f"http://127.0.0.1:{port}"
                    return
                except OSError:
                    time.sleep(0.025)
            self.proc.kill()
            self.proc.wait()
        pytest.fail("s3s-fs did not start on a free loopback port in 5 tries")

    def env(self, secret: str | None = None) -> dict:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3s-fs"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3Server:
    """The server's credentials in this process's environment, where
    walsync reads them (as the AWS tools do)."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3


def make_db(path: Path, rows: int = 10) -> sqlite3.Connection:
    """A database in WAL mode with `rows` rows in table t."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    with_rows(db, rows)
    return db


def with_rows(db: sqlite3.Connection, rows: int, start: int | None = None) -> None:
    first = start if start is not None else (db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0] + 1)
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(id, v) VALUES (?, ?)", [(i, f"row {i}") for i in range(first, first + rows)])
    db.execute("COMMIT")


def rows_of(path: Path) -> list:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT id, v FROM t ORDER BY id").fetchall()
