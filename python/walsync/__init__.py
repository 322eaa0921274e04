"""walsync for Python: continuous replication of SQLite databases (WAL mode)
to S3-compatible storage or a folder, and restores to the latest state or
any point in time, checked end to end.

This is the walsync library itself, bound to Python (the same code as the
``walsync`` command, which ``pip install walsync`` also installs)::

    from walsync import WalSync

    ws = WalSync("s3://my-bucket/backups", endpoint="https://fly.storage.tigris.dev")
    ws.snapshot("/path/to/app.db")            # -> TXID of the snapshot
    for db in ws.list():
        print(db.name, db.txid, db.last_change)
    ws.restore("app", "/path/to/restored.db")  # -> Restored(txid, committed_at, ...)

    with ws.watch(["/path/to/app.db"]):        # replicate while the app runs
        ...

Credentials come from ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``;
the endpoint and region from the arguments, else ``AWS_ENDPOINT_URL_S3`` and
``AWS_REGION``. A ``file:///path`` bucket needs none.

Every call releases the GIL while it works and can be interrupted with
Ctrl-C (``KeyboardInterrupt``; a restore then leaves no output and no
temporary files). Errors are the classes of :mod:`walsync.errors`. Log
lines go to the ``logging`` logger ``"walsync"``. walsync installs no
signal handler in your process.

``watch``, ``snapshot`` and ``replicate`` open your live databases; they
run in a walsync worker process beside yours, never in it, because two
copies of SQLite in one process (yours and walsync's) break SQLite's
locking (see :mod:`walsync._worker`). The rest run in your process.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Tuple, Union

from . import _walsync
from ._worker import Worker as _Worker
from .errors import (
    ConfigError,
    CredentialsError,
    DatabaseError,
    IntegrityError,
    LocalFileError,
    RestoreError,
    StorageError,
    WalSyncError,
)

__version__: str = _walsync.__version__

PathLike = Union[str, "os.PathLike[str]"]
#: A duration: seconds (int or float) or a ``datetime.timedelta``.
Seconds = Union[int, float, _dt.timedelta]
#: A moment: an aware ``datetime``, or RFC 3339 text (``2026-01-02T15:04:05Z``).
Moment = Union[_dt.datetime, str]


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Level:
    """The files one level of a replica holds (0: each sync, 9: snapshots)."""

    level: int
    files: int
    bytes: int


@dataclass(frozen=True)
class Database:
    """One database in a replica, as ``walsync list`` shows it."""

    name: str
    #: The newest TXID the replica holds.
    txid: int
    #: When its newest file was written (UTC), if that can be read.
    last_change: Optional[_dt.datetime]
    snapshots: int
    files: int
    bytes: int
    levels: Tuple[Level, ...] = ()


@dataclass(frozen=True)
class Restored:
    """What a restore wrote: the state as of ``txid``, committed at
    ``committed_at`` (UTC)."""

    txid: int
    committed_at: _dt.datetime
    files: int
    bytes: int


@dataclass(frozen=True)
class Problem:
    """One problem verify found, named by the object it is in."""

    key: str
    #: What kind of problem: ``missing``, ``checksum``, ``gap``, …
    kind: str
    message: str


@dataclass(frozen=True)
class DatabaseReport:
    """verify's verdict on one database."""

    name: str
    ok: bool
    #: The snapshot a restore of the latest state starts from.
    snapshot: Optional[str]
    files_checked: int
    latest_txid: int
    problems: Tuple[Problem, ...]


@dataclass(frozen=True)
class VerifyReport:
    """verify's verdict: ``ok`` when every database checked restores and
    every file is intact; ``problems`` lists what is not."""

    ok: bool
    problems: Tuple[Problem, ...]
    databases: Tuple[DatabaseReport, ...]


@dataclass(frozen=True)
class CompactReport:
    """What compaction did to one database (or would do: ``dry_run``)."""

    name: str
    dry_run: bool
    #: Files written: level, TXID range, inputs and bytes.
    compacted: Tuple[dict, ...]
    #: Objects deleted (or to delete): key and bytes.
    deleted: Tuple[dict, ...]
    files_after: int
    bytes_after: int


@dataclass(frozen=True)
class DatabaseStatus:
    """One database of a running watch, as ``walsync status`` shows it."""

    name: str
    path: str
    #: The TXID the replica durably holds.
    txid: int
    #: When a file was last stored in this run (UTC), if ever.
    last_shipped: Optional[_dt.datetime]
    #: Seconds the oldest commit seen but not stored has waited; 0 when
    #: everything seen is stored.
    lag: float
    wal_bytes: int
    last_error: Optional[str] = None
    error_since: Optional[_dt.datetime] = None


# ---------------------------------------------------------------- helpers


_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)$"
)


def _time(text: Optional[str]) -> Optional[_dt.datetime]:
    """RFC 3339 text (as walsync writes it) as an aware datetime."""
    if not text:
        return None
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz = _dt.timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = _dt.timezone(sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return _dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)


def _from_ms(ms: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


def _seconds(value: Optional[Seconds], what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"usage error: {what} takes seconds or a timedelta, not {value!r}")
    return float(value)


def _moment(value: Optional[Moment]) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ConfigError(
                "usage error: point_in_time has no time zone: pass an aware datetime "
                "(e.g. datetime.now(timezone.utc)) or RFC 3339 text"
            )
        return value.astimezone(_dt.timezone.utc).isoformat()
    raise ConfigError(f"usage error: point_in_time takes a datetime or RFC 3339 text, not {value!r}")


def _path(value: PathLike) -> str:
    return os.fspath(value)


def _problem(p: dict) -> Problem:
    return Problem(key=p["key"], kind=p["kind"], message=p["message"])


def _status(rows: List[dict]) -> List[DatabaseStatus]:
    return [
        DatabaseStatus(
            name=r["name"],
            path=r["path"],
            txid=r["txid"],
            last_shipped=_time(r.get("last_shipped")),
            lag=r["lag_ms"] / 1000,
            wal_bytes=r["wal_bytes"],
            last_error=r.get("last_error"),
            error_since=_time(r.get("error_since")),
        )
        for r in rows
    ]


# Handles still running: kept alive until stopped (a handle dropped without
# stop() keeps replicating, rather than stopping unseen), and stopped at
# interpreter exit so that what is committed is shipped, as SIGTERM makes
# the binary do. A child made by os.fork() starts with none: the workers
# are its parent's.
_running: "set[_Background]" = set()
_running_lock = threading.RLock()


def _forget_parents_handles() -> None:
    global _running_lock
    _running_lock = threading.RLock()
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_handles)


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        handles = list(_running)
    for handle in handles:
        try:
            handle.stop()
        except BaseException:  # noqa: BLE001 - exiting: nothing to raise to
            pass


class _Background:
    """A long job in a worker process (see :mod:`walsync._worker`): stop()
    it, or use it in ``with``."""

    def __init__(self, worker: _Worker) -> None:
        worker.started()
        self._worker = worker
        with _running_lock:
            _running.add(self)

    def stop(self) -> None:
        """Stops and waits until stopped; raises the error that stopped it
        early, if one did. Stopping twice does nothing."""
        try:
            self._worker.stop()
        finally:
            with _running_lock:
                _running.discard(self)

    @property
    def running(self) -> bool:
        """Whether it still runs (False once stopped, or after an error)."""
        return self._worker.alive() and bool(self._worker.request("running"))

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WatchHandle(_Background):
    """Replication running beside the application, returned by
    :meth:`WalSync.watch`. ``stop()`` ships what is committed, then stops
    (as SIGTERM makes ``walsync watch`` do); leaving a ``with`` block
    stops it too, and so does the interpreter's exit."""

    def status(self) -> List[DatabaseStatus]:
        """Each database's TXID, lag, WAL size and last error, now."""
        return _status(json.loads(self._worker.request("status")))


class ReadReplica(_Background):
    """A local database that follows a replica, returned by
    :meth:`WalSync.replicate`. Open it read-only; walsync writes it in
    whole transactions, so readers see only states the primary committed."""

    @property
    def txid(self) -> int:
        """The TXID the local database holds."""
        return int(self._worker.request("position")[0])

    @property
    def committed_at(self) -> Optional[_dt.datetime]:
        """When the primary committed the state the local database holds."""
        ms = self._worker.request("position")[1]
        return _from_ms(ms) if ms else None


# ---------------------------------------------------------------- the API


class WalSync:
    """A replica location and the commands that reach it.

    ``bucket`` is ``s3://bucket/prefix`` or ``file:///path`` (or None to
    take ``bucket`` from ``[s3]`` of ``config``). ``endpoint`` is the S3
    endpoint of a provider other than AWS; ``region`` its region;
    ``force_path_style`` chooses path-style (True) or virtual-hosted
    (False) addressing. ``config`` is a walsync.toml: its ``[s3]``,
    ``[retry]``, ``[[databases]]`` and ``[retention]`` apply as they do to
    the command; arguments win over it.

    Raises :class:`ConfigError` for a bad URL or config file.
    """

    def __init__(
        self,
        bucket: Optional[str] = None,
        endpoint: Optional[str] = None,
        region: Optional[str] = None,
        force_path_style: Optional[bool] = None,
        config: Optional[PathLike] = None,
    ) -> None:
        self._connection = {
            "bucket": bucket,
            "endpoint": endpoint,
            "region": region,
            "force_path_style": force_path_style,
            "config": None if config is None else _path(config),
        }
        self._client = _walsync.Client(**self._connection)

    def _job(self, job: str, **args: Any) -> _Worker:
        return _Worker({"job": job, "connection": self._connection, "args": args})

    def __repr__(self) -> str:
        return f"WalSync({self._client.describe()!r})"

    def snapshot(self, path: PathLike, name: Optional[str] = None) -> int:
        """Stores a full snapshot of the database at ``path`` (after
        shipping its WAL) and returns its TXID. ``name`` is the replica
        name (default: the file name without extension, as ``watch``
        names it)."""
        return int(self._job("snapshot", path=_path(path), name=name).result())

    def list(self) -> List[Database]:
        """Every database in the replica."""
        rows = json.loads(self._client.list())
        return [
            Database(
                name=r["name"],
                txid=r["txid"],
                last_change=_time(r.get("last_change")),
                snapshots=r["snapshots"],
                files=r["files"],
                bytes=r["bytes"],
                levels=tuple(Level(l["level"], l["files"], l["bytes"]) for l in r.get("levels", [])),
            )
            for r in rows
        ]

    def restore(
        self,
        name: str,
        output: PathLike,
        txid: Optional[int] = None,
        point_in_time: Optional[Moment] = None,
        force: bool = False,
        if_db_not_exists: bool = False,
        if_replica_exists: bool = False,
        parallelism: int = 8,
    ) -> Optional[Restored]:
        """Restores ``name`` (a replica name, or a database path of the
        config) into ``output``: the latest state, or as of ``txid``, or as
        of ``point_in_time`` (an aware datetime or RFC 3339 text). Every
        file is checked; the output appears whole or not at all.

        Refuses to replace an existing ``output`` (:class:`RestoreError`)
        unless ``force``. Returns None, doing nothing, when
        ``if_db_not_exists`` and the output exists, or ``if_replica_exists``
        and the replica holds nothing for ``name``.
        """
        if isinstance(txid, bool) or (txid is not None and not isinstance(txid, int)):
            raise ConfigError(f"usage error: txid takes an int, not {txid!r}")
        if txid is not None and txid < 0:
            raise ConfigError(f"usage error: txid must be ≥ 0, not {txid}")
        done = json.loads(
            self._client.restore(
                name,
                _path(output),
                txid,
                _moment(point_in_time),
                force,
                if_db_not_exists,
                if_replica_exists,
                parallelism,
            )
        )
        if done["outcome"] != "restored":
            return None
        return Restored(
            txid=done["txid"],
            committed_at=_from_ms(done["committed_ms"]),
            files=done["files"],
            bytes=done["bytes"],
        )

    def verify(self, name: Optional[str] = None, parallelism: int = 8) -> VerifyReport:
        """Checks that ``name`` (every database when None) restores: every
        file is read and checked, nothing is written locally. A damaged
        replica is a report with ``ok`` False, not an exception; storage
        failing raises :class:`StorageError`."""
        names = None if name is None else [name]
        reports = [
            DatabaseReport(
                name=r["name"],
                ok=r["ok"],
                snapshot=r.get("snapshot"),
                files_checked=r["files_checked"],
                latest_txid=r["latest_txid"],
                problems=tuple(_problem(p) for p in r["problems"]),
            )
            for r in json.loads(self._client.verify(names, parallelism))
        ]
        return VerifyReport(
            ok=all(r.ok for r in reports),
            problems=tuple(p for r in reports for p in r.problems),
            databases=tuple(reports),
        )

    def compact(
        self,
        name: Optional[str] = None,
        force: bool = False,
        pitr_window: Optional[Seconds] = None,
        even_if_active: bool = False,
    ) -> List[CompactReport]:
        """Compacts ``name`` (every database when None) and applies the
        config's ``[retention]`` (or the defaults; ``pitr_window`` overrides
        its window). Without ``force`` it only says what it would do. With
        ``force`` it refuses a replica a watch may be writing
        (:class:`ConfigError`) unless ``even_if_active``."""
        names = None if name is None else [name]
        rows = json.loads(
            self._client.compact(names, force, _seconds(pitr_window, "pitr_window"), even_if_active)
        )
        return [
            CompactReport(
                name=r["name"],
                dry_run=r["dry_run"],
                compacted=tuple(r["compacted"]),
                deleted=tuple(r["deleted"]),
                files_after=r["files_after"],
                bytes_after=r["bytes_after"],
            )
            for r in rows
        ]

    def watch(
        self,
        paths: Union[PathLike, Iterable[PathLike]] = (),
        sync_interval: Optional[Seconds] = 1.0,
        *,
        snapshot_interval: Optional[Seconds] = None,
        snapshot_max_changes: Optional[int] = None,
        snapshot_on_idle: Optional[Seconds] = None,
        snapshot_max_interval: Optional[Seconds] = None,
        min_checkpoint_pages: Optional[int] = None,
        truncate_checkpoint_pages: Optional[int] = None,
        validation_interval: Optional[Seconds] = None,
        takeover: bool = False,
        pollers: Optional[int] = None,
        uploaders: Optional[int] = None,
        shutdown_timeout: Optional[Seconds] = None,
        metrics_addr: Optional[str] = None,
        socket: Optional[PathLike] = None,
    ) -> WatchHandle:
        """Replicates ``paths`` (and the config's ``[[databases]]``) in the
        background until the handle is stopped, as ``walsync watch`` does
        (in a worker process: see the module's doc); the keywords are its flags (durations in
        seconds or as timedelta). Returns once every database is open;
        a database that cannot be opened raises here.

        The handle's ``stop()`` ships what is committed, then stops; so
        does leaving a ``with`` block, and the interpreter's exit (a handle
        you drop keeps replicating until then). No
        control socket is opened unless ``socket`` (or the config) names
        one.
        """
        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [paths]
        flags = {
            "sync_interval": _seconds(sync_interval, "sync_interval"),
            "snapshot_interval": _seconds(snapshot_interval, "snapshot_interval"),
            "snapshot_max_changes": snapshot_max_changes,
            "snapshot_on_idle": _seconds(snapshot_on_idle, "snapshot_on_idle"),
            "snapshot_max_interval": _seconds(snapshot_max_interval, "snapshot_max_interval"),
            "min_checkpoint_pages": min_checkpoint_pages,
            "truncate_checkpoint_pages": truncate_checkpoint_pages,
            "validation_interval": _seconds(validation_interval, "validation_interval"),
            "takeover": bool(takeover),
            "pollers": pollers,
            "uploaders": uploaders,
            "shutdown_timeout": _seconds(shutdown_timeout, "shutdown_timeout"),
            "metrics_addr": metrics_addr,
            "socket": None if socket is None else _path(socket),
        }
        return WatchHandle(self._job("watch", paths=[_path(p) for p in paths], flags=flags))

    def replicate(
        self, name: str, local: PathLike, interval: Seconds = 1.0, force: bool = False
    ) -> ReadReplica:
        """Keeps the local database ``local`` following the replica of
        ``name`` (a read replica), polling every ``interval`` seconds in the
        background (in the worker process). Returns once ``local`` holds the replica's
        state. Refuses an existing ``local`` it did not write
        (:class:`RestoreError`) unless ``force``."""
        seconds = _seconds(interval, "interval")
        return ReadReplica(
            self._job("replicate", name=name, local=_path(local), interval=seconds, force=force)
        )

    def replicate_once(self, name: str, local: PathLike, force: bool = False) -> int:
        """Brings the read replica ``local`` up to date once and returns
        the TXID it holds (``walsync replicate --once``)."""
        return int(self._job("replicate_once", name=name, local=_path(local), force=force).result())


# ------------------------------------------------------- module functions


def snapshot(path: PathLike, bucket: str, name: Optional[str] = None, **connection: Any) -> int:
    """``WalSync(bucket, **connection).snapshot(path, name)``."""
    return WalSync(bucket, **connection).snapshot(path, name)


def restore(name: str, output: PathLike, bucket: str, **options: Any) -> Optional[Restored]:
    """``WalSync(bucket).restore(name, output, ...)``; connection keywords
    (endpoint, region, force_path_style, config) go to :class:`WalSync`,
    the rest to :meth:`WalSync.restore`."""
    connection = {k: options.pop(k) for k in _CONNECTION if k in options}
    return WalSync(bucket, **connection).restore(name, output, **options)


def list_databases(bucket: str, **connection: Any) -> List[Database]:
    """``WalSync(bucket, **connection).list()``."""
    return WalSync(bucket, **connection).list()


def status(
    socket: Optional[PathLike] = None, config: Optional[PathLike] = None
) -> Optional[List[DatabaseStatus]]:
    """The status of the ``walsync watch`` listening at ``socket``
    (default: ``[control] socket`` of ``config``, else the command's
    default); None when no watch answers."""
    text = _walsync.status(
        None if socket is None else _path(socket), None if config is None else _path(config)
    )
    return None if text is None else _status(json.loads(text))


_CONNECTION = ("endpoint", "region", "force_path_style", "config")

__all__ = [
    "WalSync",
    "WatchHandle",
    "ReadReplica",
    "Database",
    "Level",
    "Restored",
    "Problem",
    "DatabaseReport",
    "VerifyReport",
    "CompactReport",
    "DatabaseStatus",
    "snapshot",
    "restore",
    "list_databases",
    "status",
    "WalSyncError",
    "ConfigError",
    "DatabaseError",
    "StorageError",
    "CredentialsError",
    "IntegrityError",
    "RestoreError",
    "LocalFileError",
    "__version__",
]
