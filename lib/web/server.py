"""HTTP on gateway.host:gateway.port, a gateway part like any other. For now it answers
GET /health, liveness only (SPEC §11): {"ok": true|false}, nothing a stranger could learn from.

It waits on the listening socket and a wake pipe together, so an idle gateway's server never
wakes up (http.server's serve_forever looks twice a second)."""
import json
import logging
import os
import selectors
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lib.part import Part

log = logging.getLogger(__name__)


class WebServer(Part):
    name = "web"

    def __init__(self, host: str, port: int, healthy):
        """Binds now (OSError when it cannot); `healthy()` says whether the gateway is alive."""
        super().__init__()
        handler = type("Handler", (_Handler,), {"healthy": staticmethod(healthy)})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._wake_r, self._wake_w = os.pipe()

    def loops(self) -> list:
        return [self._serve]

    def stop(self, timeout: float = 2.0):
        os.write(self._wake_w, b"x")
        super().stop(timeout)
        self.server.server_close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _serve(self):
        with selectors.DefaultSelector() as sel:
            sel.register(self.server, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():     # no timeout: asleep until someone connects
                    if key.fileobj == self._wake_r:
                        return
                    self.server.handle_request()


class _Handler(BaseHTTPRequestHandler):
    healthy = None
    timeout = 10            # seconds a connection may stay silent: a stalled client holds no thread

    def do_GET(self):
        found = self.path.split("?")[0] == "/health"
        ok = found and self.healthy()
        body = {"ok": ok} if found else {"error": "only GET /health is served"}
        raw = json.dumps(body).encode()
        self.send_response((200 if ok else 503) if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass
