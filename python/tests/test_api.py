"""The Python API against file:// and a real S3 server: snapshot, list,
restore (latest, TXID, point in time), verify, compact, the module-level
helpers, a read replica, and logging through Python's logging."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time

import pytest

import walsync
from walsync import WalSync
from conftest import make_db, rows_of, with_rows


def test_snapshot_list_restore_on_file_url(tmp_path):
    make_db(tmp_path / "app.db", rows=50)
    ws = WalSync(f"file://{tmp_path}/replica")
    txid = ws.snapshot(tmp_path / "app.db")
    assert txid >= 1
    [db] = ws.list()
    assert (db.name, db.txid, db.snapshots) == ("app", txid, 1)
    assert db.files == 1 and db.bytes > 0
    assert isinstance(db.last_change, dt.datetime) and db.last_change.tzinfo is not None
    restored = ws.restore("app", tmp_path / "out.db")
    assert restored.txid == txid
    assert abs((restored.committed_at - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60
    assert rows_of(tmp_path / "out.db") == rows_of(tmp_path / "app.db")


def test_snapshot_list_restore_on_s3(tmp_path, s3_env):
    make_db(tmp_path / "app.db", rows=500)
    ws = WalSync("s3://bucket/py", endpoint=s3_env.endpoint, region="us-east-1")
    txid = ws.snapshot(tmp_path / "app.db", name="tenant-1")
    assert [(d.name, d.txid) for d in ws.list()] == [("tenant-1", txid)]
    restored = ws.restore("tenant-1", tmp_path / "out.db")
    assert restored.txid == txid
    assert rows_of(tmp_path / "out.db") == rows_of(tmp_path / "app.db")
    assert ws.verify().ok


def test_point_in_time_and_txid(tmp_path):
    db = make_db(tmp_path / "app.db", rows=5)
    ws = WalSync(f"file://{tmp_path}/replica")
    with ws.watch([tmp_path / "app.db"], sync_interval=0.05) as handle:
        states = []
        for _ in range(3):
            with_rows(db, 5)
            deadline = time.monotonic() + 10
            while handle.status()[0].lag > 0 or handle.status()[0].txid == 0:
                assert time.monotonic() < deadline, "not shipped within 10 s"
                time.sleep(0.05)
            time.sleep(0.2)  # let a TXID's files be stored before the next
            states.append((ws.list()[0].txid, dt.datetime.now(dt.timezone.utc), rows_of(tmp_path / "app.db")))
            time.sleep(0.1)
    for i, (txid, moment, rows) in enumerate(states):
        by_txid = ws.restore("app", tmp_path / f"txid-{i}.db", txid=txid)
        assert by_txid.txid == txid
        assert rows_of(tmp_path / f"txid-{i}.db") == rows
        by_time = ws.restore("app", tmp_path / f"pit-{i}.db", point_in_time=moment)
        assert by_time.txid == txid
        assert rows_of(tmp_path / f"pit-{i}.db") == rows
    # RFC 3339 text is taken as the CLI takes it.
    text = states[0][1].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert ws.restore("app", tmp_path / "pit-text.db", point_in_time=text).txid == states[0][0]


def test_module_helpers(tmp_path):
    make_db(tmp_path / "notes.db", rows=3)
    url = f"file://{tmp_path}/replica"
    txid = walsync.snapshot(tmp_path / "notes.db", url)
    assert [d.name for d in walsync.list_databases(url)] == ["notes"]
    assert walsync.restore("notes", tmp_path / "notes-restored.db", url).txid == txid
    assert rows_of(tmp_path / "notes-restored.db") == rows_of(tmp_path / "notes.db")
    # Skips, as the CLI's --if-db-not-exists does.
    assert walsync.restore("notes", tmp_path / "notes-restored.db", url, if_db_not_exists=True) is None


def test_verify_reports_damage_without_raising(tmp_path):
    make_db(tmp_path / "app.db", rows=20)
    ws = WalSync(f"file://{tmp_path}/replica")
    ws.snapshot(tmp_path / "app.db")
    assert ws.verify("app").ok
    [ltx] = list((tmp_path / "replica").rglob("*.ltx"))
    data = bytearray(ltx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ltx.write_bytes(bytes(data))
    report = ws.verify()
    assert not report.ok
    assert report.problems and report.problems[0].key.endswith(ltx.name)
    assert report.databases[0].name == "app"


def test_compact_dry_run_then_force(tmp_path):
    db = make_db(tmp_path / "app.db", rows=5)
    ws = WalSync(f"file://{tmp_path}/replica")
    with ws.watch([tmp_path / "app.db"], sync_interval=0.05):
        for _ in range(4):
            with_rows(db, 2)
            time.sleep(0.2)
    files_before = ws.list()[0].files
    [dry] = ws.compact("app")
    assert dry.dry_run and dry.name == "app"
    assert ws.list()[0].files == files_before, "a dry run changes nothing"
    # Just written: refused without even_if_active, as the CLI refuses.
    with pytest.raises(walsync.ConfigError, match="even-if-active"):
        ws.compact("app", force=True)
    [done] = ws.compact("app", force=True, even_if_active=True)
    assert not done.dry_run
    assert ws.verify("app").ok


def test_read_replica_follows(tmp_path):
    db = make_db(tmp_path / "app.db", rows=5)
    ws = WalSync(f"file://{tmp_path}/replica")
    with ws.watch([tmp_path / "app.db"], sync_interval=0.05):
        time.sleep(0.3)
        with ws.replicate("app", tmp_path / "follower.db", interval=0.1) as replica:
            assert replica.txid >= 1
            with_rows(db, 7)
            deadline = time.monotonic() + 15
            while len(rows_of(tmp_path / "follower.db")) != 12:
                assert time.monotonic() < deadline, "the replica did not catch up in 15 s"
                time.sleep(0.1)
            assert replica.committed_at is not None
    assert rows_of(tmp_path / "follower.db") == rows_of(tmp_path / "app.db")
    # Up to date once more, and the same TXID as the replica's.
    assert ws.replicate_once("app", tmp_path / "follower.db") == ws.list()[0].txid


def test_logs_go_to_python_logging_not_stderr(tmp_path, caplog, capfd):
    make_db(tmp_path / "app.db")
    ws = WalSync(f"file://{tmp_path}/replica")
    with caplog.at_level(logging.INFO, logger="walsync"):
        ws.snapshot(tmp_path / "app.db")
        ws.restore("app", tmp_path / "out.db")
        with ws.watch([tmp_path / "app.db"], sync_interval=0.05):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name == "walsync"]
    assert any("restored to TXID" in m for m in messages), messages
    assert any(m.startswith("watching 1 database") for m in messages), messages
    assert any(getattr(r, "walsync_database", None) == "app" for r in caplog.records)
    out, err = capfd.readouterr()
    assert "walsync" not in err and "walsync" not in out, (out, err)


def test_no_signal_handler_of_walsyncs_replaces_pythons(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    make_db(tmp_path / "app.db")
    ws = WalSync(f"file://{tmp_path}/replica")
    ws.snapshot(tmp_path / "app.db")
    ws.restore("app", tmp_path / "out.db")
    with ws.watch([tmp_path / "app.db"]):
        pass
    after = {s: signal.getsignal(s) for s in before}
    assert after == before


def test_status_of_a_running_walsync_watch(tmp_path):
    """walsync.status() asks a `walsync watch` (here the console script)
    over its control socket; None when none answers."""
    import subprocess
    import sys
    from pathlib import Path

    make_db(tmp_path / "app.db")
    socket = tmp_path / "walsync.sock"
    assert walsync.status(socket=socket) is None
    command = Path(sys.executable).with_name("walsync")
    proc = subprocess.Popen(
        [command, "watch", tmp_path / "app.db", "-b", f"file://{tmp_path}/replica", "--socket", socket],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (rows := walsync.status(socket=socket)) is None:
            assert time.monotonic() < deadline, "the watch did not answer within 10 s"
            time.sleep(0.05)
        assert [r.name for r in rows] == ["app"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
