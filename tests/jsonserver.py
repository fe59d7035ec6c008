"""A local JSON HTTP server (a thread) for the generic source tests.

`JsonServer().start()` listens on 127.0.0.1 (or `JsonServer(host)`) port 0; `url(path)` is the
address of a path.
`routes[path]` is a `Reply` (status, JSON body or raw bytes, headers, delay); an unknown path
answers 404. `requests` records `(path, headers, monotonic time)` of every call, so tests see
what was sent (the auth header) and when (back-off).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from localhttp import LocalHTTP


@dataclass
class Reply:
    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is instead of `body`
    delay: float = 0.0  # seconds before answering
    chunked: bool = False  # no Content-Length: the body streams in 64 KiB chunks


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    at: float


class JsonServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Reply] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._http: LocalHTTP | None = None
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path

    def set(self, path: str, body: Any = None, **options: Any) -> None:
        self.routes[path] = Reply(body, **options)

    def calls(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> JsonServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.requests.append(Request(self.path, headers, time.monotonic()))
                reply = fake.routes.get(self.path, Reply({"error": "not found"}, 404))
                if reply.delay:
                    time.sleep(reply.delay)
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        for start in range(0, len(data), 65536):
                            piece = data[start : start + 65536]
                            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout or the size cap): expected

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalHTTP(Handler, self.host)
        self.base = self._http.url
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
