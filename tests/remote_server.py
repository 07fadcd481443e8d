"""A real HTTP file server on 127.0.0.1 for the remote-input tests (never the internet).

It serves a directory with byte-range support (206 Partial Content, one range per request), an
ETag and Last-Modified, and records every request and how many body bytes it sent, so a test can
assert that GDAL read a COG by ranges and fetched less than the whole file. Switches make it
misbehave the ways servers do: no range support (200 with the whole file), 403 for some paths,
and `broken` (every later connection is closed without an answer: the network went away).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Server(ThreadingHTTPServer):
    """Quiet when a client hangs up mid-answer (GDAL drops a server without range support): the
    default handler prints a traceback to sys.stderr, which the CLI runner of the test reading
    stderr may have captured at that moment. Every other error is still printed."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class FileServer:
    def __init__(self, root: Path, *, ranges: bool = True, forbidden: tuple[str, ...] = ()):
        self.root, self.ranges, self.forbidden = Path(root), ranges, set(forbidden)
        self.broken = False
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.sent: Counter[str] = Counter()  # body bytes sent per path
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def range_requests(self, name: str) -> list[str]:
        return [r for m, p, r in self.requests if p.split("?")[0] == "/" + name and r]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                name = self.path.split("?")[0].lstrip("/")
                with server._lock:
                    server.requests.append((self.command, self.path, self.headers.get("Range")))
                if server.broken:  # the connection drops without an answer
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                file = server.root / name
                if name in server.forbidden:
                    return self._status(403)
                if not file.is_file():
                    return self._status(404)
                data = file.read_bytes()
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if match and server.ranges:
                    start = int(match[1])
                    end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
                    chunk = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    chunk = data
                    self.send_response(200)
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("ETag", f'"{os.stat(file).st_mtime_ns:x}-{len(data):x}"')
                self.send_header("Last-Modified", formatdate(os.stat(file).st_mtime, usegmt=True))
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    with server._lock:
                        server.sent[name] += len(chunk)

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
