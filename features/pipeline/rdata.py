"""Read character data out of an installed R package's lazy-load database, without R.

Debian's `r-cran-janeaustenr` ships Jane Austen's six novels as R objects in
`data/Rdata.rdb` (concatenated zlib-compressed serializations) with `data/Rdata.rdx` (a gzipped
serialization of the index: each object's offset and length in the .rdb). This module parses R's
XDR serialization format (version 2 and 3) far enough for data: vectors, lists, pairlists,
symbols, attributes and the compact ALTREP sequences R 3.5+ writes for row names. Anything
executable (closures, environments, byte code) is refused rather than interpreted, and nothing is
ever evaluated, so a hostile file can at worst fail to parse.

    >>> import io, struct
    >>> xdr = b"X\\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 16, 1) + struct.pack(">ii", 9, 2) + b"hi"
    >>> unserialize(xdr)
    ['hi']
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

# SEXP types and pseudo-types of R's serialize.c that data can hold.
NIL, SYM, LIST, CHAR, LGL, INT, REAL, CPLX, STR, VEC, EXPR, RAW, S4 = 0, 1, 2, 9, 10, 13, 14, 15, 16, 19, 20, 24, 25
LANG, ATTRLANG, ATTRLIST = 6, 240, 239
ALTREP, BASEENV, EMPTYENV, BASENS, MISSING, UNBOUND, GLOBALENV, NILVALUE, REF = 238, 241, 242, 247, 251, 252, 253, 254, 255
NA_INT = -(2 ** 31)


class RDataError(ValueError):
    """Not R data this reader understands; the message says what was found."""


class _Reader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise RDataError(f"not an XDR serialization (starts {data[:2]!r})")
        self.data, self.pos, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer's and minimal reader's R versions
        if version == 3:
            self.take(self.int())  # the native encoding's name
        elif version != 2:
            raise RDataError(f"serialization version {version} (2 and 3 are read)")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RDataError("truncated data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        return n if n != -1 else (self.int() << 32) + self.int()

    def item(self):
        return self.item_attrs()[0]

    def item_attrs(self) -> tuple[object, dict | None]:
        """The next object and its attributes (names, class, ...) as a dict, or None."""
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (NILVALUE, EMPTYENV, BASEENV, GLOBALENV, BASENS, MISSING, UNBOUND):
            return None, None
        if kind == REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1], None
        if kind == SYM:
            name = self.item()
            self.refs.append(name)
            return name, None
        if kind in (LIST, LANG, ATTRLANG, ATTRLIST):  # a pairlist: (tag, value) cells
            cells = []
            while kind in (LIST, LANG, ATTRLANG, ATTRLIST):
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                cells.append((tag, self.item()))
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            if kind != NILVALUE:
                raise RDataError(f"a pairlist ends in type {kind}")
            return (dict(cells) if all(isinstance(t, str) for t, _ in cells) else [v for _, v in cells]), None
        if kind == CHAR:
            n = self.int()
            return (None if n == -1 else self.take(n).decode("utf-8", errors="replace")), None
        if kind == ALTREP:
            info, state, attrs = self.item(), self.item(), self.item()
            return _altrep(info, state), attrs
        if kind in (LGL, INT):
            n = self.length()
            value = [None if v == NA_INT else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        elif kind == REAL:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == CPLX:
            n = self.length()
            value = list(struct.unpack(f">{2 * n}d", self.take(16 * n)))
        elif kind == RAW:
            value = self.take(self.length())
        elif kind in (STR, VEC, EXPR):
            value = [self.item() for _ in range(self.length())]
        elif kind == S4:
            value = None
        else:
            raise RDataError(f"R type {kind} is code or an environment, not data")
        return value, (self.item() if has_attr else None)


def _altrep(info, state):
    """Expand the ALTREP forms serialize writes for data: compact sequences and wrappers."""
    cls = info[0] if isinstance(info, list) and info else None
    if cls in ("compact_intseq", "compact_realseq"):
        n, start, step = state
        return [start + i * step for i in range(int(n))]
    if isinstance(cls, str) and cls.startswith("wrap_"):
        return state[0]
    if cls == "deferred_string":
        return [str(v) for v in state[0]] if isinstance(state, list) and state else []
    raise RDataError(f"ALTREP class {cls!r}")


def unserialize(data: bytes):
    """An R object serialized in XDR form -> Python: vectors as lists (NA as None), named
    pairlists as dicts, data frames as lists of columns."""
    return _Reader(data).item()


def lazyload(rdb: Path) -> dict[str, object]:
    """All objects of an R lazy-load database (`NAME.rdb` beside its `NAME.rdx`), by name."""
    rdb = Path(rdb)
    index, _ = _Reader(gzip.decompress(rdb.with_suffix(".rdx").read_bytes())).item_attrs()
    try:  # list(variables = list(NAME = c(offset, length), ...), references, compressed)
        variables = index[0]
        names = _variable_names(rdb.with_suffix(".rdx"))
    except (TypeError, IndexError) as e:
        raise RDataError(f"{rdb.with_suffix('.rdx')}: not a lazy-load index") from e
    blob = rdb.read_bytes()
    out = {}
    for name, (offset, size) in zip(names, variables):
        chunk = blob[offset:offset + size]
        out[name] = unserialize(zlib.decompress(chunk[4:]))  # 4 bytes: the uncompressed length
    return out


def _variable_names(rdx: Path) -> list[str]:
    """The names of a lazy-load index's first element, `variables`."""
    reader = _Reader(gzip.decompress(rdx.read_bytes()))
    flags = reader.int()
    if flags & 0xFF != VEC:
        raise RDataError(f"{rdx}: a lazy-load index is a list")
    reader.length()
    _, attrs = reader.item_attrs()
    return list(attrs["names"]) if isinstance(attrs, dict) and isinstance(attrs.get("names"), list) else []
