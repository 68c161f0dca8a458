"""A light single-user server for the scale benchmark (tests/bench_scale.py).

It answers what the Hub asks of a single-user server and nothing more: any
GET under its prefix (JUPYTERHUB_SERVICE_PREFIX, e.g. ``/user/NAME/api``) gets
200 with the ``X-JupyterHub-Version`` header; anything else gets 404. It
listens where JUPYTERHUB_SERVICE_URL says and stays up until it is signalled.
Standard library only, so it starts in a few milliseconds and holds a few MiB:
with hundreds of servers, the benchmark then measures the Hub, not the servers.
"""

import os
import signal
import socket
import sys
from urllib.parse import urlsplit

REQUEST_LIMIT = 16384


def answer(conn: socket.socket, prefix: str, version: str) -> None:
    request = b""
    while b"\r\n\r\n" not in request and len(request) < REQUEST_LIMIT:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    method, _, rest = request.partition(b" ")
    path = rest.split(b" ", 1)[0].decode("latin-1")
    if method in (b"GET", b"HEAD") and (path + "/").startswith(prefix):
        status, body = "200 OK", b'{"light": true}\n'
    else:
        status, body = "404 Not Found", b"not here\n"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-JupyterHub-Version: {version}\r\nConnection: close\r\n\r\n"
    )
    conn.sendall(head.encode() + (b"" if method == b"HEAD" else body))


def main() -> int:
    url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    version = os.environ.get("RSS_LIGHT_SERVER_VERSION", "")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.create_server((url.hostname or "", url.port), backlog=64) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                try:
                    answer(conn, prefix, version)
                except OSError:
                    pass


if __name__ == "__main__":
    sys.exit(main())
