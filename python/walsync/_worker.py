"""The worker process: where the package opens the application's live
databases (``watch``, ``snapshot``, ``replicate``), and the line protocol
the package speaks with it.

Why a process and not a thread of the application: the application's
``sqlite3`` module and walsync each carry their own copy of SQLite, and two
copies of SQLite in one process break SQLite's locking (POSIX locks belong
to the process, so one copy's locks never stop the other, and closing a
file in one copy drops the locks the other holds on it: see "Multiple
copies of SQLite linked into the same application" in SQLite's "How To
Corrupt An SQLite Database File"). Seen here: a snapshot taken in-process
closed walsync's connection, its SQLite found no other connection locking
the database (the application's locks are the same process's), checkpointed
and deleted the WAL under the application's open connection, whose next
commits went to the deleted file and were never replicated. In a worker
process walsync's locks are its own, exactly as with the ``walsync``
command. Calls that only read the replica or write a new file (``list``,
``restore``, ``verify``, ``compact``) run in the application's process.

Protocol (JSON, one object a line): the package writes the job; the worker
answers ``{"started": true}`` (long jobs), ``{"result": …}`` or
``{"error": {"class": …, "message": …}}``. A long job then takes numbered
requests (``{"id": n, "request": "status"}``, ``position``, ``running``),
each answered with its number, until ``stop`` or the end of its input (the
application exited, however it ended): then it stops, shipping what is
committed, and answers a last time. Log
records come on the worker's stderr as JSON lines and are logged again by
the package's ``walsync`` logger. The worker runs in a session of its own,
so a Ctrl-C at the terminal reaches the application, which decides; a
SIGTERM or SIGINT sent to the worker itself stops it as ``stop`` does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Dict, Optional

from . import errors


# --------------------------------------------------------- the package side


def _log_records(stream: IO[bytes]) -> None:
    """Logs the worker's records again on this process's ``walsync``
    logger, until the worker's stderr closes."""
    logger = logging.getLogger("walsync")
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        try:
            record = json.loads(line)
            level, message = int(record["level"]), str(record["msg"])
            extra = {
                "walsync_event": record.get("event"),
                "walsync_database": record.get("database"),
            }
        except (ValueError, KeyError, TypeError):
            if line:
                logger.warning("worker: %s", line)
            continue
        logger.log(level, "%s", message, extra=extra)


class Worker:
    """A worker process running one job; see the module's doc.

    Belongs to the process that started it: in a child made by
    ``os.fork()`` (a pre-forking server) it does nothing, since the pipes
    and the process are the parent's."""

    def __init__(self, job: Dict[str, Any]) -> None:
        job = dict(job, log_level=logging.getLogger("walsync").getEffectiveLevel())
        self._owner = os.getpid()
        # Re-entrant: a signal handler or a logging handler may stop a
        # handle while this thread is inside a request.
        self._lock = threading.RLock()
        self._requests = 0
        self._finished = False
        # Isolated (-I: no current folder, no PYTHON* variables, no user
        # site) and given the folder this package was imported from, so the
        # worker runs this very package whatever the application's cwd.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {here!r}); from walsync._worker import main; sys.exit(main())"
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._logs = threading.Thread(
            target=_log_records, args=(self._proc.stderr,), name="walsync-worker-log", daemon=True
        )
        self._logs.start()
        self._send(job)

    def _mine(self) -> bool:
        return os.getpid() == self._owner

    def started(self) -> None:
        """Waits until a long job is under way; raises why it could not
        start (the process has then ended)."""
        try:
            self._answer(None)
        except errors.WalSyncError:
            self._close()
            raise
        except BaseException:
            self._kill()
            raise

    def request(self, name: str) -> Any:
        """Sends a request to the running job and returns its answer. Each
        request carries a number and answers to earlier ones (left unread
        by a KeyboardInterrupt) are skipped, so the replies stay in step."""
        if not self._mine():
            raise errors.WalSyncError("error: this handle belongs to the process that started it")
        with self._lock:
            if self._finished:
                raise errors.WalSyncError("error: stopped")
            self._requests += 1
            self._send({"id": self._requests, "request": name})
            return self._answer(self._requests)

    def result(self) -> Any:
        """The answer of a one-shot job, once its process ended."""
        try:
            return self._answer(None)
        except KeyboardInterrupt:
            self._kill()
            raise
        finally:
            self._close()

    def stop(self) -> None:
        """Stops the job (it ships what is committed) and ends the
        process; raises the error that stopped the job, if one did."""
        if not self._mine():
            return
        with self._lock:
            if self._finished:
                return
            try:
                if self._proc.poll() is None:
                    self._requests += 1
                    self._send({"id": self._requests, "request": "stop"})
                self._answer(self._requests)
            except KeyboardInterrupt:
                self._kill()
                raise
            finally:
                self._close()

    def alive(self) -> bool:
        return self._mine() and not self._finished and self._proc.poll() is None

    def _send(self, message: Any) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the worker ended: _answer() says how

    def _answer(self, request: Optional[int]) -> Any:
        """The next answer (to `request`, when numbered); an error answer
        is raised as its class."""
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            line = stdout.readline()
            if not line:
                code = self._proc.wait()
                raise errors.WalSyncError(
                    f"error: the walsync worker process ended unexpectedly (exit status {code})"
                )
            answer = json.loads(line)
            if request is None or answer.get("id") in (request, None):
                break
        error = answer.get("error")
        if error:
            cls = getattr(errors, str(error.get("class")), errors.WalSyncError)
            if not (isinstance(cls, type) and issubclass(cls, errors.WalSyncError)):
                cls = errors.WalSyncError
            raise cls(str(error.get("message")))
        return answer.get("result")

    def _close(self) -> None:
        """Ends the input (a worker still running stops, shipping what is
        committed), waits for the process and the log forwarder, and closes
        the pipes."""
        if self._finished or not self._mine():
            return
        self._finished = True
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        if threading.current_thread() is not self._logs:
            self._logs.join()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe:
                pipe.close()

    def _kill(self) -> None:
        """Interrupted: the worker is told to stop (SIGTERM: it ships what
        is committed) and waited for."""
        if self._mine() and self._proc.poll() is None:
            self._proc.terminate()
        self._close()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - at collection time: nothing to raise to
            pass


# ---------------------------------------------------------- the worker side


class _JsonLines(logging.Handler):
    """Writes each record as a JSON line on stderr, for the package."""

    def emit(self, record: logging.LogRecord) -> None:
        line = {
            "level": record.levelno,
            "msg": record.getMessage(),
            "event": getattr(record, "walsync_event", None),
            "database": getattr(record, "walsync_database", None),
        }
        try:
            sys.stderr.write(json.dumps(line) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


class _Stop(Exception):
    """SIGTERM or SIGINT sent to the worker."""


def _reply(**answer: Any) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _serve(handle: Any, requests: Dict[str, Any]) -> int:
    """Answers requests until ``stop``, the end of input or a signal; then
    stops the job and answers a last time."""
    last = None
    try:
        for line in sys.stdin:
            message = json.loads(line)
            last, name = message.get("id"), message.get("request")
            if name == "stop":
                break
            answer = requests.get(name)
            if answer is None:
                _reply(id=last, error={"class": "ConfigError", "message": f"usage error: no request {name!r}"})
            else:
                _reply(id=last, result=answer())
    except _Stop:
        pass
    # Stopping: a further signal must not cut the shipping short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handle.stop()
    except errors.WalSyncError as e:
        _reply(id=last, error={"class": type(e).__name__, "message": e.message})
        return e.exit_code
    _reply(id=last, result=None)
    return 0


def _run(job: Dict[str, Any]) -> int:
    from . import _walsync

    client = _walsync.Client(**job["connection"])
    args = job["args"]
    kind = job["job"]
    if kind == "snapshot":
        _reply(result=client.snapshot(args["path"], args["name"]))
    elif kind == "replicate_once":
        _reply(result=client.replicate_once(args["name"], args["local"], args["force"]))
    elif kind == "watch":
        handle = client.watch(args["paths"], args["flags"])
        _reply(started=True)
        return _serve(handle, {"status": handle.status, "running": handle.running})
    elif kind == "replicate":
        handle = client.replicate(args["name"], args["local"], args["interval"], args["force"])
        _reply(started=True)
        return _serve(handle, {"position": handle.position, "running": handle.running})
    else:
        raise errors.ConfigError(f"usage error: no job {kind!r}")
    return 0


def main() -> int:
    def stop(signum: int, frame: Any) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    job = json.loads(sys.stdin.readline() or "null")
    if not isinstance(job, dict):
        return 2
    logger = logging.getLogger("walsync")
    logger.setLevel(int(job.get("log_level", logging.INFO)))
    logger.addHandler(_JsonLines())
    logger.propagate = False
    try:
        return _run(job)
    except errors.WalSyncError as e:
        _reply(error={"class": type(e).__name__, "message": e.message})
        return e.exit_code
    except _Stop:
        _reply(error={"class": "WalSyncError", "message": "stopped: the worker was sent a signal"})
        return 1


