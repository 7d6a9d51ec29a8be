"""What every fake service here shares: a ThreadingHTTPServer on 127.0.0.1 in a daemon thread,
and polling until a condition holds.

    class FakeThing(FakeServer):
        def handler(self):              # the BaseHTTPRequestHandler class to serve with
            return _handler(self)

    with FakeThing() as thing:          # start() .. stop(); thing.base: "http://127.0.0.1:<port>"
        thing.wait_for(lambda: thing.sent, what="a reply")
"""
import email.parser
import threading
import time
from abc import ABC, abstractmethod
from http.server import ThreadingHTTPServer

HOST = "127.0.0.1"


def wait_for(check, timeout=15, what="condition"):
    """Poll `check` until it returns something true, and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def parse_multipart(content_type: str, raw: bytes) -> tuple[dict, dict]:
    """A multipart/form-data body as (fields: name -> text, files: name -> (filename, bytes))."""
    msg = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode()
                                                + raw)
    fields, files = {}, {}
    for part in msg.get_payload():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if part.get_filename() is None:
            fields[name] = data.decode()
        else:
            files[name] = (part.get_filename(), data)
    return fields, files


class FakeServer(ABC):
    """Subclasses give `handler()`; `drop()` (cut live connections) runs before the server stops.
    The server is `self._httpd` and knows its fake as `self._httpd.fake`."""

    port = 0                            # 0: any free port
    server_class = ThreadingHTTPServer  # (its request threads are daemons)
    _httpd = _thread = None

    @abstractmethod
    def handler(self):
        """The BaseHTTPRequestHandler class that answers this fake's requests."""

    def start(self):
        self._httpd = self.server_class((HOST, self.port), self.handler())
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread and self._thread.is_alive():      # a second stop() does nothing
            self.drop()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)

    def drop(self):
        """Cut the connections that are still open (websockets); nothing by default."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def bound_port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.bound_port}"

    @staticmethod
    def wait_for(check, timeout=15, what="condition"):
        return wait_for(check, timeout, what)
