"""The part of MessagePack (msgpack.org, spec.md) that Socket.IO's msgpack parser puts on the wire:
nil, bool, int, float, str, bin, array and map. A timestamp extension (what notepack.io makes of
a JavaScript Date) is read as an ISO-8601 string, any other extension (its `undefined`) as None.
Smaller than the `msgpack` package and its C build on a Pi, for the few kilobytes Mochat sends.
"""
import struct
from datetime import datetime, timezone

# type byte -> (struct format of the value or of the length that follows, what comes)
FORMS = {0xCA: (">f", "num"), 0xCB: (">d", "num"), 0xCC: (">B", "num"), 0xCD: (">H", "num"),
         0xCE: (">I", "num"), 0xCF: (">Q", "num"), 0xD0: (">b", "num"), 0xD1: (">h", "num"),
         0xD2: (">i", "num"), 0xD3: (">q", "num"), 0xD9: (">B", "str"), 0xDA: (">H", "str"),
         0xDB: (">I", "str"), 0xC4: (">B", "bin"), 0xC5: (">H", "bin"), 0xC6: (">I", "bin"),
         0xDC: (">H", "list"), 0xDD: (">I", "list"), 0xDE: (">H", "map"), 0xDF: (">I", "map"),
         0xC7: (">B", "ext"), 0xC8: (">H", "ext"), 0xC9: (">I", "ext")}
CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}


def pack(obj) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(o, out: bytearray):
    if o is None or isinstance(o, bool):
        out.append({None: 0xC0, False: 0xC2, True: 0xC3}[o])
    elif isinstance(o, int):
        if -32 <= o < 128:
            out += struct.pack(">b" if o < 0 else ">B", o)
        else:
            _sized(out, o, (0xCC, 0xCD, 0xCE, 0xCF) if o >= 0 else (0xD0, 0xD1, 0xD2, 0xD3),
                   "BHIQ" if o >= 0 else "bhiq", value=True)
    elif isinstance(o, float):
        out += b"\xcb" + struct.pack(">d", o)
    elif isinstance(o, str):
        raw = o.encode()
        _head(out, len(raw), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += raw
    elif isinstance(o, (bytes, bytearray)):
        _sized(out, len(o), (0xC4, 0xC5, 0xC6), "BHI")
        out += o
    elif isinstance(o, (list, tuple)):
        _head(out, len(o), 0x90, 16, (0xDC, 0xDD))
        for item in o:
            _pack(item, out)
    elif isinstance(o, dict):
        _head(out, len(o), 0x80, 16, (0xDE, 0xDF))
        for key, value in o.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError(f"msgpack: cannot pack a {type(o).__name__}")


def _head(out, n, fix, fix_limit, codes):
    if n < fix_limit:
        out.append(fix | n)
    else:
        _sized(out, n, codes, "BHI"[-len(codes):])


def _sized(out, n, codes, formats, value=False):
    """The first of `codes` whose format holds `n`, then `n` in it."""
    for code, fmt in zip(codes, formats):
        try:
            out += bytes([code]) + struct.pack(">" + fmt, n)
            return
        except struct.error:
            continue
    raise ValueError(f"msgpack: {'the number' if value else 'a length of'} {n} is too large")


def unpack(data: bytes):
    """The one object in `data`; ValueError if it is anything else."""
    try:
        value, end = _unpack(data, 0)
    except (IndexError, struct.error, TypeError, OverflowError, OSError, RecursionError) as e:
        raise ValueError(f"msgpack: malformed data ({type(e).__name__}: {e})") from None
    if end != len(data):
        raise ValueError(f"msgpack: {len(data) - end} bytes after the object")
    return value


def _unpack(b: bytes, i: int):
    c = b[i]
    i += 1
    if c < 0x80 or c >= 0xE0:
        return (c if c < 0x80 else c - 256), i
    if c in CONSTANTS:
        return CONSTANTS[c], i
    if c < 0xC0:
        kind, n = ("map", "list", "str", "str")[(c >> 4) - 8], c & (0x1F if c >= 0xA0 else 0x0F)
    elif 0xD4 <= c <= 0xD8:
        kind, n = "ext", 1 << (c - 0xD4)
    elif c in FORMS:
        fmt, kind = FORMS[c]
        n = struct.unpack_from(fmt, b, i)[0]
        i += struct.calcsize(fmt)
        if kind == "num":
            return n, i
    else:
        raise ValueError(f"msgpack: unknown type byte 0x{c:02x}")
    if kind in ("list", "map"):
        items = []
        for _ in range(n * (2 if kind == "map" else 1)):
            item, i = _unpack(b, i)
            items.append(item)
        return (dict(zip(items[::2], items[1::2])) if kind == "map" else items), i
    ext = struct.unpack_from(">b", b, i)[0] if kind == "ext" else None
    i += kind == "ext"
    raw = bytes(b[i:i + n])
    if len(raw) < n:
        raise ValueError("msgpack: the data ends too early")
    i += n
    if kind == "str":
        return raw.decode(), i
    return (raw if kind == "bin" else _timestamp(raw) if ext == -1 else None), i


def _timestamp(raw: bytes) -> str | None:
    if len(raw) == 4:
        sec, ns = struct.unpack(">I", raw)[0], 0
    elif len(raw) == 8:
        both = struct.unpack(">Q", raw)[0]
        sec, ns = both & (2**34 - 1), both >> 34
    elif len(raw) == 12:
        ns, sec = struct.unpack(">Iq", raw)
    else:
        return None
    at = datetime.fromtimestamp(sec, timezone.utc).replace(microsecond=ns // 1000)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
