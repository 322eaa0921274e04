#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 reverse proxy for S3 (stdlib only, threads).

usage: faultproxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
                     [--rate 0.3] [--kinds reset,5xx,slowdown,truncate,delay]
                     [--methods GET,PUT] [--paths REGEX] [--delay 2,10]
                     [--mode faults] [--admin PORT] [--seed N]

Every request is read whole (head, then the body by Content-Length or the
chunked framing, byte for byte) and forwarded unchanged: same method, target,
headers (Host included) and body, so SigV4 signatures still match. The
upstream response is read whole too; then, for a request the fault settings
pick, the proxy answers with a fault instead of (or on top of) it:

  reset     the client connection is closed with an RST (SO_LINGER 0) and no
            answer; half of the time before the request is forwarded, half
            after (the server has acted on it, the client never hears so)
  5xx       500 InternalError or 503 ServiceUnavailable (S3 XML error body);
            the request is not forwarded
  slowdown  503 SlowDown; not forwarded
  truncate  the real status and headers (the real Content-Length), then only
            part of the body (0 to len-1 bytes), then FIN. Only responses with
            a body qualify; for the others another of the chosen kinds is
            used (or none when truncate is the only one)
  delay     the real response, after a sleep (default 2-10 s)

Each request under fault (method in --methods, target matching --paths) gets
a fault with probability --rate, the kind drawn by weight from --kinds
("reset:2,truncate" weighs reset twice). Modes:

  faults    the above (rate 0 = a plain proxy)
  blackhole connections are accepted and requests read, never answered (held
            until the mode changes, then closed)
  outage    the listening socket is closed (connection refused) and open
            connections are reset; listening resumes when the mode changes

Admin endpoint (--admin PORT, on the --listen host):
  GET  /stats                     counters as JSON (see FaultProxy.stats)
  GET  /mode                      the current settings as JSON
  POST /mode?mode=faults&rate=0.3&kinds=reset,truncate&methods=GET&paths=\\.ltx&delay=2,10
                                  change what is given, keep the rest; answers the settings
                                  (methods= or paths= empty: every method / target)
  POST /reset                     counters to zero

From Python (scripts/chaos.py does this):
  proxy = FaultProxy(("127.0.0.1", 0), ("127.0.0.1", s3_port), seed=1).start()
  proxy.port; proxy.configure(rate=0.3, methods=["GET"]); proxy.stats(); proxy.stop()
"""

import argparse
import json
import random
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KINDS = ["reset", "5xx", "slowdown", "truncate", "delay"]
MODES = ["faults", "blackhole", "outage"]
MAX_HEAD = 64 * 1024


class ClientGone(Exception):
    """The client closed its connection (or sent garbage)."""


class UpstreamError(Exception):
    pass


def parse_kinds(spec):
    """'reset:2,truncate' -> {'reset': 2.0, 'truncate': 1.0}; 'all' or '' -> every kind."""
    if isinstance(spec, dict):
        return dict(spec)
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()]
    if not spec or spec == ["all"]:
        return {k: 1.0 for k in KINDS}
    kinds = {}
    for item in spec:
        name, _, weight = item.strip().partition(":")
        if name not in KINDS:
            raise ValueError(f"unknown fault kind {name!r} (kinds: {', '.join(KINDS)})")
        kinds[name] = float(weight) if weight else 1.0
    return kinds


def parse_methods(spec):
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()]
    return sorted({m.strip().upper() for m in spec or []})  # empty: every method


def parse_range(spec):
    if isinstance(spec, str):
        lo, _, hi = spec.partition(",")
        spec = (float(lo), float(hi or lo))
    lo, hi = spec
    return (float(lo), float(hi))


class Conn:
    """A socket with a read buffer."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def read_until(self, marker, limit=MAX_HEAD):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out, self.buf = self.buf[: i + len(marker)], self.buf[i + len(marker):]
                return out
            if len(self.buf) > limit:
                raise ValueError("header too long")
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self):
        try:
            while True:
                self._fill()
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out

    def read_chunked(self):
        """The raw bytes of a chunked body, framing and trailers included."""
        out = []
        while True:
            line = self.read_until(b"\r\n")
            out.append(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to an empty line
                    t = self.read_until(b"\r\n")
                    out.append(t)
                    if t == b"\r\n":
                        return b"".join(out)
            out.append(self.read_exact(size + 2))


def parse_head(head):
    """(start line, [(name, value)]) of an HTTP head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers


def header(headers, name, default=None):
    for n, v in headers:
        if n == name:
            return v
    return default


def read_body(conn, headers, eof_ok):
    """The body's raw bytes, by chunked framing or Content-Length (or to EOF
    for a response without either, eof_ok)."""
    te = (header(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        return conn.read_chunked()
    cl = header(headers, "content-length")
    if cl is not None:
        return conn.read_exact(int(cl))
    return conn.read_to_eof() if eof_ok else b""


def s3_error(status, code, message, resource="", with_body=True):
    reason = {500: "Internal Server Error", 503: "Service Unavailable"}[status]
    request_id = "%016X" % random.getrandbits(64)
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\n\r\n").encode()
    return head + (body if with_body else b"")


class FaultProxy:
    """The proxy. start() runs it in daemon threads; configure() changes the
    settings at any time; stats() returns the counters."""

    def __init__(self, listen, upstream, rate=0.3, kinds=None, methods=None, paths=None,
                 delay=(2.0, 10.0), mode="faults", seed=None, admin_port=None, log=None):
        self.listen_addr = listen
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.rate, self.kinds, self.methods, self.paths = 0.0, {}, [], None
        self.delay, self.mode = (2.0, 10.0), "faults"
        self.configure(mode=mode, rate=rate, kinds="all" if kinds is None else kinds, methods=methods or "",
                       paths=paths or "", delay=delay)
        self.admin_port = admin_port
        self.log = log
        self.stopping = False
        self.listener = None
        self.port = None
        self.clients = set()
        self.threads = []
        self.admin = None
        self.reset_stats()

    # -- settings and counters

    def configure(self, mode=None, rate=None, kinds=None, methods=None, paths=None, delay=None):
        """Changes the given settings (all or none: a bad value raises
        ValueError and changes nothing); returns them all."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
        if rate is not None:
            rate = float(rate)
            if not 0.0 <= rate <= 1.0:
                raise ValueError("rate must be between 0 and 1")
        kinds = parse_kinds(kinds) if kinds is not None else None
        methods = parse_methods(methods) if methods is not None else None
        if paths is not None:
            try:
                paths = re.compile(paths) if paths else ""
            except re.error as e:
                raise ValueError(f"bad paths regex: {e}")
        delay = parse_range(delay) if delay is not None else None
        with self.lock:
            for name, value in (("mode", mode), ("rate", rate), ("kinds", kinds), ("methods", methods),
                                ("delay", delay)):
                if value is not None:
                    setattr(self, name, value)
            if paths is not None:
                self.paths = paths or None
            self.changed.notify_all()
            if self.mode == "outage":
                for sock in list(getattr(self, "clients", ())):
                    hard_close(sock)
            return self._settings()

    def _settings(self):
        return {"mode": self.mode, "rate": self.rate, "kinds": self.kinds, "methods": self.methods,
                "paths": self.paths.pattern if self.paths else "", "delay": list(self.delay)}

    def settings(self):
        with self.lock:
            return self._settings()

    def reset_stats(self):
        with self.lock:
            self.counts = {"connections": 0, "requests": 0, "forwarded": 0, "passed": 0,
                           "faults": {k: 0 for k in KINDS}, "faults_total": 0,
                           "blackholed": 0, "outage_resets": 0, "upstream_errors": 0,
                           "requests_by_method": {}, "faults_by_method": {}, "truncate_bytes": 0}

    def stats(self):
        with self.lock:
            out = json.loads(json.dumps(self.counts))
            out["settings"] = self._settings()
            return out

    def _count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def _count_fault(self, kind, method):
        with self.lock:
            self.counts["faults"][kind] += 1
            self.counts["faults_total"] += 1
            by = self.counts["faults_by_method"]
            by[method] = by.get(method, 0) + 1

    def _say(self, message):
        if self.log:
            print(f"faultproxy: {message}", file=self.log, flush=True)

    # -- running

    def start(self):
        self._bind()
        t = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        t.start()
        self.threads.append(t)
        if self.admin_port is not None:
            self._start_admin()
        return self

    def _bind(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.listen_addr[0], self.port if self.port else self.listen_addr[1]))
        s.listen(128)
        s.settimeout(0.1)
        self.port = s.getsockname()[1]
        self.listener = s

    def _accept_loop(self):
        while not self.stopping:
            mode = self.settings()["mode"]
            if mode == "outage":
                if self.listener is not None:
                    self.listener.close()
                    self.listener = None
                time.sleep(0.05)
                continue
            if self.listener is None:
                try:
                    self._bind()
                except OSError as e:
                    self._say(f"cannot listen again on port {self.port}: {e}")
                    time.sleep(0.2)
                    continue
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.counts["connections"] += 1
                self.clients.add(sock)
            threading.Thread(target=self._serve, args=(sock,), name="faultproxy-conn", daemon=True).start()
        if self.listener is not None:
            self.listener.close()

    def stop(self):
        self.stopping = True
        with self.lock:
            self.changed.notify_all()
            clients = list(self.clients)
        for sock in clients:
            hard_close(sock)
        if self.admin is not None:
            self.admin.shutdown()
            self.admin.server_close()
        for t in self.threads:
            t.join(timeout=5)

    # -- one client connection

    def _serve(self, sock):
        client = Conn(sock)
        upstream = None
        try:
            while not self.stopping:
                try:
                    head = client.read_until(b"\r\n\r\n")
                except (EOFError, OSError, ValueError):
                    return
                start, headers = parse_head(head)
                parts = start.split(" ")
                if len(parts) != 3:
                    return
                method, target = parts[0].upper(), parts[1]
                if "100-continue" in (header(headers, "expect") or "").lower():
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    body = read_body(client, headers, eof_ok=False)
                except (EOFError, OSError, ValueError):
                    return
                request = head + body
                with self.lock:
                    self.counts["requests"] += 1
                    by = self.counts["requests_by_method"]
                    by[method] = by.get(method, 0) + 1
                    mode, kind, delay = self._decide(method, target)
                if mode == "outage":
                    self._count("outage_resets")
                    hard_close(sock)
                    return
                if mode == "blackhole":
                    self._count("blackholed")
                    with self.lock:
                        while not self.stopping and self.mode == "blackhole":
                            self.changed.wait(1.0)
                    hard_close(sock)
                    return
                if kind in ("5xx", "slowdown"):
                    self._count_fault(kind, method)
                    if kind == "slowdown":
                        answer = s3_error(503, "SlowDown", "Please reduce your request rate.", target, method != "HEAD")
                    elif self.rng.random() < 0.5:
                        answer = s3_error(500, "InternalError", "We encountered an internal error. Please try again.",
                                          target, method != "HEAD")
                    else:
                        answer = s3_error(503, "ServiceUnavailable", "Service is unable to handle request.",
                                          target, method != "HEAD")
                    sock.sendall(answer)
                    if client_wants_close(headers):
                        return
                    continue
                if kind == "reset" and self.rng.random() < 0.5:
                    self._count_fault(kind, method)
                    hard_close(sock)
                    return
                try:
                    upstream, resp_head, resp_body, close_after = self._forward(upstream, request, method)
                except (UpstreamError, OSError, EOFError, ValueError) as e:
                    self._count("upstream_errors")
                    self._say(f"upstream failed for {method} {target}: {e}")
                    hard_close(sock)
                    return
                self._count("forwarded")
                if kind == "truncate" and len(resp_body) < 1:
                    kind = self._other_kind(method)
                if kind == "reset":
                    self._count_fault(kind, method)
                    hard_close(sock)
                    return
                if kind == "truncate":
                    self._count_fault(kind, method)
                    cut = self.rng.randrange(len(resp_body))
                    with self.lock:
                        self.counts["truncate_bytes"] += len(resp_body) - cut
                    sock.sendall(resp_head + resp_body[:cut])
                    soft_close(sock)
                    return
                if kind == "delay":
                    self._count_fault(kind, method)
                    if not self._sleep(delay):
                        return
                else:
                    self._count("passed")
                sock.sendall(resp_head + resp_body)
                if close_after or client_wants_close(headers):
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self.clients.discard(sock)
            try:
                sock.close()
            except OSError:
                pass
            if upstream is not None:
                try:
                    upstream.sock.close()
                except OSError:
                    pass

    def _decide(self, method, target):
        """(mode, fault kind or None, delay seconds); called with the lock held."""
        if self.mode != "faults":
            return self.mode, None, 0
        if self.methods and method not in self.methods:
            return "faults", None, 0
        if self.paths is not None and not self.paths.search(target):
            return "faults", None, 0
        if not self.kinds or self.rng.random() >= self.rate:
            return "faults", None, 0
        names = list(self.kinds)
        kind = self.rng.choices(names, [self.kinds[k] for k in names])[0]
        return "faults", kind, self.rng.uniform(*self.delay)

    def _other_kind(self, method):
        """A kind other than truncate, for a response without a body."""
        with self.lock:
            others = {k: w for k, w in self.kinds.items() if k != "truncate"}
            if not others:
                return None
            names = list(others)
            return self.rng.choices(names, [others[k] for k in names])[0]

    def _sleep(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stopping:
                return False
            time.sleep(min(0.1, end - time.monotonic()))
        return True

    def _forward(self, upstream, request, method):
        """Sends the request upstream (a kept-alive connection, or a new one if
        that one was closed) and reads the whole response. Returns (upstream
        connection or None, response head, raw body, close after)."""
        for attempt in (1, 2):
            fresh = upstream is None
            if fresh:
                s = socket.create_connection(self.upstream, timeout=300)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream = Conn(s)
            try:
                upstream.sock.sendall(request)
                while True:
                    head = upstream.read_until(b"\r\n\r\n")
                    status_line, headers = parse_head(head)
                    status = int(status_line.split(" ")[1])
                    if 100 <= status < 200 and status != 101:
                        continue  # 100 Continue: the real answer follows
                    break
            except (OSError, EOFError) as e:
                upstream.sock.close()
                upstream = None
                if fresh or attempt == 2:
                    raise UpstreamError(str(e) or type(e).__name__)
                continue  # the kept-alive connection had been closed: once more on a new one
            if method == "HEAD" or status in (204, 304):
                body = b""
            else:
                body = read_body(upstream, headers, eof_ok=True)
            close = "close" in (header(headers, "connection") or "").lower() or (
                method != "HEAD" and status not in (204, 304)
                and header(headers, "content-length") is None
                and "chunked" not in (header(headers, "transfer-encoding") or "").lower())
            if close:
                upstream.sock.close()
                upstream = None
            return upstream, head, body, close
        raise UpstreamError("unreachable")

    # -- admin endpoint

    def _start_admin(self):
        proxy = self

        class Admin(BaseHTTPRequestHandler):
            def _answer(self, code, obj):
                body = (json.dumps(obj, indent=1) + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = urlsplit(self.path).path
                if path == "/stats":
                    self._answer(200, proxy.stats())
                elif path == "/mode":
                    self._answer(200, proxy.settings())
                else:
                    self._answer(404, {"error": "GET /stats or /mode"})

            def do_POST(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                query = url.query or self.rfile.read(length).decode()
                q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
                if url.path == "/mode":
                    try:
                        self._answer(200, proxy.configure(**{k: q[k] for k in
                                     ("mode", "rate", "kinds", "methods", "paths", "delay") if k in q}))
                    except ValueError as e:
                        self._answer(400, {"error": str(e)})
                elif url.path == "/reset":
                    proxy.reset_stats()
                    self._answer(200, proxy.stats())
                else:
                    self._answer(404, {"error": "POST /mode?... or /reset"})

            def log_message(self, *args):
                pass

        self.admin = ThreadingHTTPServer((self.listen_addr[0], self.admin_port), Admin)
        self.admin.daemon_threads = True
        self.admin_port = self.admin.server_address[1]
        t = threading.Thread(target=self.admin.serve_forever, name="faultproxy-admin", daemon=True)
        t.start()
        self.threads.append(t)


def client_wants_close(headers):
    return "close" in (header(headers, "connection") or "").lower()


def hard_close(sock):
    """Close with an RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def soft_close(sock):
    """Close with a FIN after what was sent."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def host_port(text):
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def main(argv):
    p = argparse.ArgumentParser(prog="faultproxy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, type=host_port, help="HOST:PORT to listen on (PORT 0: any)")
    p.add_argument("--upstream", required=True, type=host_port, help="HOST:PORT of the S3 server")
    p.add_argument("--rate", type=float, default=0.3, help="fault probability per request (default 0.3)")
    p.add_argument("--kinds", default="all", help=f"comma-separated, optional :weight ({','.join(KINDS)}; default all)")
    p.add_argument("--methods", default="", help="only these methods get faults, e.g. GET or PUT (default all)")
    p.add_argument("--paths", default="", help="only request targets matching this regex get faults")
    p.add_argument("--delay", default="2,10", help="delay range in seconds (default 2,10)")
    p.add_argument("--mode", default="faults", choices=MODES)
    p.add_argument("--admin", type=int, help="admin port (GET /stats, GET|POST /mode, POST /reset)")
    p.add_argument("--seed", type=int)
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    proxy = FaultProxy(a.listen, a.upstream, rate=a.rate, kinds=a.kinds, methods=a.methods, paths=a.paths,
                       delay=a.delay, mode=a.mode, seed=a.seed, admin_port=a.admin,
                       log=None if a.quiet else sys.stderr).start()
    admin = f", admin on port {proxy.admin_port}" if proxy.admin is not None else ""
    print(f"faultproxy: listening on {a.listen[0]}:{proxy.port} -> {a.upstream[0]}:{a.upstream[1]}{admin}; "
          f"{json.dumps(proxy.settings())}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()
        print("faultproxy: " + json.dumps(proxy.stats()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
