"""A local HTTP file server with ``Range`` support, standing in for a LibriSpeech mirror in tests."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.mode`` says otherwise.

    Modes: "range" (normal), "ignore-range" (always 200 with the whole file), "drop" (the next
    ``server.drops`` responses announce the full length but stop halfway and close).
    """

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        if requested and server.mode != "ignore-range":
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.mode == "drop" and server.drops > 0:
            server.drops -= 1
            self.wfile.write(body[: len(body) // 2])  # HTTP/1.0: the connection closes on return
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[ThreadingHTTPServer]:
    """Serve ``files`` (relative path -> bytes) on 127.0.0.1 at ``server.url`` in a thread.

    ``server.requests`` records ``(path, Range header)``; ``server.mode`` and ``server.drops``
    select the misbehaviours described in :class:`_Handler`.
    """
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = files
    httpd.requests = []
    httpd.mode = "range"
    httpd.drops = 0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz archive in memory holding ``files`` (archive path -> bytes), for the server to serve."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
