"""The server side of RFC 6455 websockets for the fakes, on the stdlib alone.

Any `http.server` handler can take a websocket on any path::

    def do_GET(self):
        if is_upgrade(self):
            ws = accept(self)               # 101 Switching Protocols
            ws.send({"op": 10})             # a dict goes as JSON text
            try:
                while True:
                    text = ws.recv(timeout=1.0)     # None when nothing came in time
                    ...
            except Closed as e:
                print("client left with", e.code)

`ws.close(code, reason)` ends the connection the proper way (a close frame); `ws.drop()` cuts the
TCP connection without one, as a crashed server or a lost network would. `send` may be called
from any thread. Text frames, binary frames, fragments, ping/pong and close are understood;
compression extensions are not offered.
"""
import base64
import hashlib
import json
import socket
import struct
import threading
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class Closed(Exception):
    """The connection is over: `code` is the peer's close code, or 1006 when it just went away."""

    def __init__(self, code: int = 1006, reason: str = ""):
        super().__init__(f"websocket closed ({code}{': ' + reason if reason else ''})")
        self.code, self.reason = code, reason


def is_upgrade(handler) -> bool:
    return "websocket" in handler.headers.get("Upgrade", "").lower()


def accept(handler, protocol: str | None = None) -> "WebSocket":
    """Answer the opening handshake of an http.server request; the handler's socket becomes ours."""
    key = handler.headers.get("Sec-WebSocket-Key", "")
    if not key or handler.headers.get("Sec-WebSocket-Version") != "13":
        handler.send_error(400, "not a version 13 websocket handshake")
        raise Closed(1002, "bad handshake")
    digest = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", digest)
    if protocol:
        handler.send_header("Sec-WebSocket-Protocol", protocol)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    return WebSocket(handler.connection, handler.path)


class WebSocket:
    def __init__(self, sock: socket.socket, path: str = "/"):
        self.sock, self.path = sock, path
        self._buf = b""
        self._parts, self._kind = [], None      # a fragmented message being put together
        self._send_lock = threading.Lock()
        self.closing = False                    # we sent a close frame
        self.pongs = []

    # --- sending ---

    def send(self, data, opcode: int | None = None):
        if isinstance(data, (dict, list)):
            data = json.dumps(data)
        if isinstance(data, str):
            data, opcode = data.encode(), opcode or TEXT
        self._frame(opcode or BINARY, data)

    def ping(self, data: bytes = b""):
        self._frame(PING, data)

    def close(self, code: int = 1000, reason: str = ""):
        """Send a close frame and stop writing; the peer's answer ends recv() with Closed."""
        if self.closing:
            return
        self.closing = True
        try:
            self._frame(CLOSE, struct.pack("!H", code) + reason.encode()[:120])
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def drop(self):
        """Cut the connection without a close frame."""
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _frame(self, opcode: int, payload: bytes):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        with self._send_lock:
            try:
                self.sock.sendall(head + payload)       # a server never masks
            except OSError:
                raise Closed() from None

    # --- receiving ---

    def recv(self, timeout: float | None = None):
        """The next message (str for text, bytes for binary), or None after `timeout` seconds.
        Pings are answered on the way; the end of the connection raises Closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._parse()
            if frame is None:
                if not self._fill(deadline):
                    return None
                continue
            fin, opcode, payload = frame
            if opcode == PING:
                self._frame(PONG, payload)
            elif opcode == PONG:
                self.pongs.append(payload)
            elif opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if not self.closing:
                    self.close(code if code != 1005 else 1000)
                self.drop()
                raise Closed(code, payload[2:].decode(errors="replace"))
            else:
                if opcode != CONT:
                    self._parts, self._kind = [], opcode
                self._parts.append(payload)
                if fin:
                    data = b"".join(self._parts)
                    return data.decode() if self._kind == TEXT else data

    def _fill(self, deadline) -> bool:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            raise Closed() from None
        if not chunk:
            raise Closed()
        self._buf += chunk
        return True

    def _parse(self):
        """One whole frame off the buffer, unmasked, or None if it has not all arrived."""
        b = self._buf
        if len(b) < 2:
            return None
        fin, opcode, masked, n = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x80, b[1] & 0x7F
        at = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        mask = b[at:at + 4] if masked else b""
        at += len(mask) if masked else 0
        if len(b) < at + n or masked and len(mask) < 4:
            return None
        payload = b[at:at + n]
        if masked:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        self._buf = b[at + n:]
        return bool(fin), opcode, payload

