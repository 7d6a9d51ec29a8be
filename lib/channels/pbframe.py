"""The binary frames of Feishu's long connection: protobuf message `pbbp2.Frame`, by hand.

    Frame:  1 SeqID uint64   2 LogID uint64   3 service int32   4 method int32 (0 control, 1 data)
            5 headers (repeated Header)   6 payload_encoding string   7 payload_type string
            8 payload bytes   9 LogIDNew string
    Header: 1 key string   2 value string

Fields 1-4 and both Header fields are `required` (proto2), so they are always written. Only two
wire types occur: varint (0) and length-delimited (2); others are skipped when reading.
"""
from dataclasses import dataclass, field

CONTROL, DATA = 0, 1
_U64 = (1 << 64) - 1


@dataclass
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = CONTROL
    headers: list = field(default_factory=list)         # [(key, value)], in order, repeats allowed
    payload_encoding: str = ""
    payload_type: str = ""
    payload: bytes = b""
    log_id_new: str = ""

    def header(self, key: str, default: str = "") -> str:
        return next((v for k, v in self.headers if k == key), default)


def _varint(n: int) -> bytes:
    n &= _U64                   # a negative int32 goes out as ten bytes, as protobuf says
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else bytes(value)
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode(f: Frame) -> bytes:
    out = [_field(1, f.seq_id), _field(2, f.log_id), _field(3, f.service), _field(4, f.method)]
    out += [_field(5, _field(1, k) + _field(2, v)) for k, v in f.headers]
    out += [_field(n, v) for n, v in ((6, f.payload_encoding), (7, f.payload_type),
                                      (8, f.payload), (9, f.log_id_new)) if v]
    return b"".join(out)


def _fields(data: bytes):
    """(field number, int or bytes) for each field of one message."""
    at = 0

    def varint():
        nonlocal at
        n = shift = 0
        while True:
            if at >= len(data):
                raise ValueError("truncated varint")
            b = data[at]
            at += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return n
    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            size = varint()
            if at + size > len(data):
                raise ValueError("truncated field")
            at += size
            yield number, data[at - size:at]
        elif wire in (1, 5):                            # fixed 64 / 32 bits: not in Frame
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _int32(n: int) -> int:
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n >= 1 << 31 else n


def decode(data: bytes) -> Frame:
    f = Frame()
    for number, value in _fields(bytes(data)):
        if number in (1, 2):
            setattr(f, ("seq_id", "log_id")[number - 1], value)
        elif number in (3, 4):
            setattr(f, ("service", "method")[number - 3], _int32(value))
        elif number == 5:
            h = dict(_fields(value))
            f.headers.append((h.get(1, b"").decode(), h.get(2, b"").decode()))
        elif number == 8:
            f.payload = value
        elif number in (6, 7, 9):
            setattr(f, {6: "payload_encoding", 7: "payload_type", 9: "log_id_new"}[number],
                    value.decode())
    return f
