"""Reading a GGUF file's keys and tensor shapes, without loading its tensors or its tokenizer arrays.

Both writers check an adapter against the base GGUF with it, and the merged writer copies the
base's keys (tokenizer included) from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import Seed2LoraError


def read_header(path: Path, arrays: bool = False) -> tuple[dict[str, tuple[Any, Any, Any]], dict[str, tuple[int, ...]]]:
    """({key: (value, value type, array item type)}, {tensor: shape in numpy order}) of a GGUF file.

    Strings stay bytes (copied as they are); arrays are skipped unless `arrays`. gguf.GGUFReader
    builds numpy views of every tokenizer string: 10 s and more for a 49K vocabulary, to learn a
    few names and shapes. The layout (GGUF v2/v3, little-endian): magic, version, tensor count, key
    count; each key a length-prefixed name, a value type and the value (an array: item type, count,
    items); then each tensor's name, dimension count, dimensions (innermost first), type and offset.
    """
    import mmap
    import struct

    import gguf

    t = gguf.GGUFValueType
    scalars = {t.UINT8: "B", t.INT8: "b", t.UINT16: "H", t.INT16: "h", t.UINT32: "I", t.INT32: "i", t.FLOAT32: "f",
               t.BOOL: "?", t.UINT64: "Q", t.INT64: "q", t.FLOAT64: "d"}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] not in (2, 3):
            raise Seed2LoraError(f"{path} is not a GGUF v2/v3 file")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from("<" + fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def raw() -> bytes:
            nonlocal pos
            n = take("Q")
            pos += n
            return bytes(buf[pos - n:pos])

        def value(kind: int, keep: bool) -> Any:
            nonlocal pos
            if kind == t.STRING:
                return raw()
            if kind != t.ARRAY:
                return take(scalars[kind])
            sub, count = take("I"), take("Q")
            if not keep:
                if sub in scalars:
                    pos += count * struct.calcsize(scalars[sub])
                else:
                    for _ in range(count):
                        value(sub, keep)
                return None
            if sub in scalars:
                items = list(struct.unpack_from(f"<{count}{scalars[sub]}", buf, pos))
                pos += count * struct.calcsize(scalars[sub])
                return items
            return [value(sub, keep) for _ in range(count)]

        fields: dict[str, tuple[Any, Any, Any]] = {}
        for _ in range(n_kv):
            key, kind = raw().decode("utf-8"), t(take("I"))
            sub = t(struct.unpack_from("<I", buf, pos)[0]) if kind == t.ARRAY else None
            v = value(kind, arrays)
            if v is not None:
                fields[key] = (v, kind, sub)
        shapes = {}
        for _ in range(n_tensors):
            name = raw().decode("utf-8")
            dims = [take("Q") for _ in range(take("I"))]
            take("I"), take("Q")  # type and offset
            shapes[name] = tuple(reversed(dims))
    return fields, shapes


def text_field(fields: dict[str, tuple[Any, Any, Any]], key: str, default: str = "?") -> str:
    return fields[key][0].decode("utf-8", "replace") if key in fields else default
