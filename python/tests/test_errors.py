"""Every kind of failure is its own exception class, mirroring the
command's exit codes, with the message the command prints."""

from __future__ import annotations

import datetime as dt
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import walsync
from walsync import WalSync
from conftest import make_db

WALSYNC = Path(sys.executable).with_name("walsync")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_classes_mirror_exit_codes():
    codes = {
        walsync.WalSyncError: 1,
        walsync.ConfigError: 2,
        walsync.DatabaseError: 3,
        walsync.StorageError: 4,
        walsync.CredentialsError: 4,
        walsync.IntegrityError: 5,
        walsync.RestoreError: 6,
        walsync.LocalFileError: 7,
    }
    for cls, code in codes.items():
        assert cls.exit_code == code
        assert issubclass(cls, walsync.WalSyncError)
    assert issubclass(walsync.CredentialsError, walsync.StorageError)


def test_config_errors(tmp_path):
    with pytest.raises(walsync.ConfigError, match="bad replica URL"):
        WalSync("s3:/not-a-url")
    (tmp_path / "walsync.toml").write_text("[s3\nbucket = 1\n")
    with pytest.raises(walsync.ConfigError):
        WalSync(config=tmp_path / "walsync.toml")
    ws = WalSync(f"file://{tmp_path}/replica")
    with pytest.raises(walsync.ConfigError, match="not both"):
        ws.restore("app", tmp_path / "out.db", txid=1, point_in_time="2026-01-01T00:00:00Z")
    with pytest.raises(walsync.ConfigError, match="time zone"):
        ws.restore("app", tmp_path / "out.db", point_in_time=dt.datetime(2026, 1, 1))
    with pytest.raises(walsync.ConfigError):
        ws.restore("app", tmp_path / "out.db", point_in_time="yesterday")
    with pytest.raises(walsync.ConfigError):
        ws.watch([tmp_path / "x.db"], sync_interval=-1)


def test_database_errors(tmp_path):
    ws = WalSync(f"file://{tmp_path}/replica")
    with pytest.raises(walsync.DatabaseError, match="does not exist"):
        ws.snapshot(tmp_path / "missing.db")
    with pytest.raises(walsync.DatabaseError, match="does not exist"):
        ws.watch([tmp_path / "missing.db"])
    rollback = sqlite3.connect(tmp_path / "rollback.db")
    rollback.execute("CREATE TABLE t(x)")
    rollback.commit()
    with pytest.raises(walsync.DatabaseError, match="WAL"):
        ws.snapshot(tmp_path / "rollback.db")


def test_storage_errors(tmp_path, s3_env):
    (tmp_path / "walsync.toml").write_text("[retry]\nmax_retries = 0\n")
    dead = WalSync("s3://bucket", endpoint=f"http://127.0.0.1:{closed_port()}", config=tmp_path / "walsync.toml")
    with pytest.raises(walsync.StorageError) as raised:
        dead.list()
    assert raised.value.exit_code == 4
    os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-0123456789"
    refused = WalSync("s3://bucket", endpoint=s3_env.endpoint)
    with pytest.raises(walsync.CredentialsError) as raised:
        refused.list()
    assert "wrong-secret" not in str(raised.value)


def test_integrity_error_on_a_damaged_file(tmp_path):
    make_db(tmp_path / "app.db", rows=100)
    ws = WalSync(f"file://{tmp_path}/replica")
    ws.snapshot(tmp_path / "app.db")
    [ltx] = list((tmp_path / "replica").rglob("*.ltx"))
    data = bytearray(ltx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ltx.write_bytes(bytes(data))
    with pytest.raises(walsync.IntegrityError) as raised:
        ws.restore("app", tmp_path / "out.db")
    assert raised.value.exit_code == 5
    assert not (tmp_path / "out.db").exists()


def test_restore_errors(tmp_path):
    make_db(tmp_path / "app.db")
    ws = WalSync(f"file://{tmp_path}/replica")
    ws.snapshot(tmp_path / "app.db")
    with pytest.raises(walsync.RestoreError, match="exists"):
        ws.restore("app", tmp_path / "app.db")
    with pytest.raises(walsync.RestoreError, match="no backups"):
        ws.restore("nobody", tmp_path / "nobody.db")
    assert ws.restore("nobody", tmp_path / "nobody.db", if_replica_exists=True) is None


def test_local_file_error(tmp_path):
    make_db(tmp_path / "app.db")
    ws = WalSync(f"file://{tmp_path}/replica")
    ws.snapshot(tmp_path / "app.db")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(walsync.LocalFileError) as raised:
        ws.restore("app", tmp_path / "a-file" / "out.db")
    assert raised.value.exit_code == 7


def test_messages_and_codes_are_the_commands(tmp_path):
    """The console script is the command; its message is the exception's."""
    make_db(tmp_path / "app.db")
    url = f"file://{tmp_path}/replica"
    ws = WalSync(url)
    ws.snapshot(tmp_path / "app.db")
    with pytest.raises(walsync.RestoreError) as raised:
        ws.restore("app", tmp_path / "app.db")
    run = subprocess.run(
        [WALSYNC, "restore", "app", "-b", url, "-o", tmp_path / "app.db"], capture_output=True, text=True
    )
    assert run.returncode == raised.value.exit_code == 6
    assert run.stderr.strip() == f"walsync: {raised.value}"
