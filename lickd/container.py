"""The ``.lkd`` file: a self-describing, checksummed container of coded latents.

Layout (little-endian), format version 1::

    magic      4 bytes  8B 4C 4B 44 (b"\\x8bLKD": a non-ASCII first byte, like PNG's, catches text-mode damage)
    version    u8       1
    flags      u8       0 (reserved; a reader rejects unknown flags)
    header_len u16      length of the header
    header     tagged fields: u8 tag, varint length, value (see TAGS); unknown tags are skipped, so
               later versions can add fields that older readers ignore
    u32        CRC32 of the header
    sections   one per latent, in header order: the coded stream, then its u32 CRC32

Fields: model name, weights sha256 prefix (8 bytes), architecture, N, M, quality, lambda, metric,
original size, coder id, and per latent its name, shape (C, H, W) and byte length. A typical
header is ~100 bytes (about 0.002 bpp on a Kodak image).

The reader checks everything before any network runs: magic, version, header CRC, field types
and ranges, that the section lengths add up to the file size exactly, and every section CRC.
Memory stays bounded by the file size plus a pixel limit on the declared image size.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import CorruptFileError

MAGIC = b"\x8bLKD"
FORMAT_VERSION = 1
#: The largest image a file may declare: 120 MP, so that a 100 MP photo codes. A few bytes can
#: declare it, and decoding needs memory for the declared pixels (~45 bytes each with tiles:
#: 4.4 GB measured for 100 MP), so this is the decoder's memory bound.
MAX_PIXELS = 120_000_000
MAX_SIDE = 65_535
MAX_QUALITY = 1000
MAX_SECTIONS = 16
#: A bound on what a header may declare (an image of MAX_PIXELS pixels is 360 MB as raw RGB); a
#: section length within it but past the end of the data is a truncated file.
MAX_FILE_BYTES = 1 << 32

_PREFIX = struct.Struct("<4sBBH")
_CRC = struct.Struct("<I")
_F32 = struct.Struct("<f")

# tag -> (field, kind); kind: "str", "int", "hash", "f32", "size", "latent" (repeatable).
# A whole quality is written as tag 6 (a varint, as since version 1), a fractional one (what a
# variable-rate model codes at, e.g. 3.5) as tag 12 (float32); a file holds at most one of them.
TAGS = {1: ("model", "str"), 2: ("weights", "hash"), 3: ("architecture", "str"), 4: ("N", "int"), 5: ("M", "int"),
        6: ("quality", "int"), 7: ("lambda", "f32"), 8: ("metric", "str"), 9: ("size", "size"), 10: ("coder", "str"),
        11: ("latent", "latent"), 12: ("quality", "f32")}
_TAG_OF = {name: tag for tag, (name, _) in sorted(TAGS.items(), reverse=True)}  # "quality": 6
_FRACTIONAL_QUALITY = 12
REQUIRED = ("model", "weights", "architecture", "N", "M", "metric", "size", "coder")


@dataclass
class Section:
    name: str
    shape: tuple[int, ...]  # (C, H, W) of the latent
    data: bytes


@dataclass
class LkdFile:
    model: str
    weights: str  # sha256 prefix of the weights file, 16 hex digits
    architecture: str
    N: int
    M: int
    height: int
    width: int
    coder: str
    quality: int | float | None = None  # a variable-rate model decodes at exactly this quality
    lmbda: float | None = None
    metric: str = "mse"
    sections: list[Section] = field(default_factory=list)
    version: int = FORMAT_VERSION

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise CorruptFileError(f"no '{name}' section in the file")

    def header_dict(self) -> dict:
        return {
            "model": self.model, "weights": self.weights, "architecture": self.architecture,
            "N": self.N, "M": self.M, "quality": self.quality, "lambda": self.lmbda,
            "metric": self.metric, "size": [self.height, self.width], "coder": self.coder,
            "latents": [{"name": s.name, "shape": list(s.shape), "bytes": len(s.data)} for s in self.sections],
        }

    def payload_bytes(self) -> int:
        return sum(len(s.data) for s in self.sections)

    def header_bytes(self) -> bytes:
        out = bytearray()

        def put(name: str, value: bytes) -> None:
            out.append(_TAG_OF[name])
            out.extend(_varint(len(value)))
            out.extend(value)

        for name in ("model", "architecture", "metric", "coder"):
            put(name, getattr(self, name).encode("utf-8"))
        try:
            weights = bytes.fromhex(self.weights)
        except ValueError:
            raise ValueError(f"weights hash must be hex, got {self.weights!r}") from None
        put("weights", weights)
        put("N", _varint(self.N))
        put("M", _varint(self.M))
        if self.quality is not None:
            quality = _F32.unpack(_F32.pack(float(self.quality)))[0]  # what a reader will see
            if not 0 <= quality <= MAX_QUALITY:
                raise ValueError(f"quality must be in 0..{MAX_QUALITY}, got {self.quality}")
            if quality.is_integer():
                put("quality", _varint(int(quality)))
            else:
                out.append(_FRACTIONAL_QUALITY)
                out.extend(_varint(_F32.size))
                out.extend(_F32.pack(self.quality))
        if self.lmbda is not None:
            put("lambda", _F32.pack(self.lmbda))
        put("size", _varint(self.height) + _varint(self.width))
        for s in self.sections:
            name = s.name.encode("utf-8")
            put("latent", bytes([len(name)]) + name + b"".join(_varint(v) for v in s.shape) + _varint(len(s.data)))
        if len(out) > 0xFFFF:
            raise ValueError("header too large")
        return bytes(out)

    def to_bytes(self) -> bytes:
        header = self.header_bytes()
        out = [_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header)), header, _CRC.pack(zlib.crc32(header))]
        for s in self.sections:
            out += [s.data, _CRC.pack(zlib.crc32(s.data))]
        return b"".join(out)


def _varint(v: int) -> bytes:
    if v < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


class _Reader:
    """Bounds-checked reads from a bytes object; every failure is a CorruptFileError."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise CorruptFileError(f"truncated {self.what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        """Only the shortest form `_varint` writes (as the rANS streams' reader: csrc/rans_format.h)."""
        v = 0
        for shift in range(0, 64, 7):
            b = self.take(1)[0]
            if (shift and b == 0) or (shift == 63 and b > 1):
                break
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
        raise CorruptFileError(f"malformed number in {self.what}")

    def done(self) -> bool:
        return self.pos == len(self.data)


def _decode_field(name: str, kind: str, value: bytes):
    r = _Reader(value, f"header field '{name}'")
    if kind == "str":
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(f"header field '{name}' is not UTF-8") from None
    if kind == "hash":
        if len(value) != 8:
            raise CorruptFileError("header field 'weights' must hold 8 bytes")
        return value.hex()
    if kind == "f32":
        if len(value) != 4:
            raise CorruptFileError(f"header field '{name}' must hold 4 bytes")
        out = _F32.unpack(value)[0]
        if out != out or abs(out) == float("inf"):
            raise CorruptFileError(f"header field '{name}' is not a finite number")
        return out if name == "quality" else float(f"{out:.7g}")  # lambda: the float32's shortest decimal
    if kind == "int":
        out = r.varint()
    elif kind == "size":
        out = (r.varint(), r.varint())
    else:  # latent
        name_len = r.take(1)[0]
        try:
            latent_name = r.take(name_len).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError("latent name is not UTF-8") from None
        out = (latent_name, (r.varint(), r.varint(), r.varint()), r.varint())
    if not r.done():
        raise CorruptFileError(f"trailing bytes in header field '{name}'")
    return out


def _check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise CorruptFileError(f"header field '{name}' out of range ({value})")
    return value


def _check_quality(value):
    if not 0 <= value <= MAX_QUALITY:
        raise CorruptFileError(f"header field 'quality' out of range ({value})")
    if isinstance(value, float) and value.is_integer():  # one form: a whole quality is tag 6
        raise CorruptFileError("header field 'quality' holds a whole number in its fractional form")
    return value


def read_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[LkdFile, int, list[int]]:
    """Parses and validates the header; returns the file (sections without data), the offset
    where the sections start and the declared section lengths."""
    if len(data) < _PREFIX.size:
        raise CorruptFileError("too short to be a .lkd file")
    magic, version, flags, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError("not a .lkd file (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptFileError(f"unsupported .lkd format version {version} (this lickd reads {FORMAT_VERSION})")
    if flags != 0:
        raise CorruptFileError(f"unknown .lkd flags 0x{flags:02x}")
    start, end = _PREFIX.size, _PREFIX.size + header_len
    if len(data) < end + _CRC.size:
        raise CorruptFileError("truncated header")
    header = bytes(data[start:end])
    if zlib.crc32(header) != _CRC.unpack_from(data, end)[0]:
        raise CorruptFileError("header CRC mismatch (corrupt file)")
    fields: dict = {}
    latents = []
    r = _Reader(header, "header")
    while not r.done():
        tag = r.take(1)[0]
        value = r.take(r.varint())
        if tag not in TAGS:
            continue  # a field from a later minor revision
        name, kind = TAGS[tag]
        if kind == "latent":
            if len(latents) >= MAX_SECTIONS:
                raise CorruptFileError("too many latents in header")
            latents.append(_decode_field(name, kind, value))
            continue
        if name in fields:
            raise CorruptFileError(f"header field '{name}' appears twice")
        fields[name] = _decode_field(name, kind, value)
    missing = [name for name in REQUIRED if name not in fields]
    if missing or not latents:
        raise CorruptFileError(f"header lacks {', '.join(missing) or 'latents'}")
    height = _check_range("height", fields["size"][0], 1, MAX_SIDE)
    width = _check_range("width", fields["size"][1], 1, MAX_SIDE)
    if height * width > max_pixels:
        raise CorruptFileError(f"image of {width}x{height} exceeds the limit of {max_pixels} pixels")
    f = LkdFile(model=fields["model"], weights=fields["weights"], architecture=fields["architecture"],
                N=_check_range("N", fields["N"], 1, 4096), M=_check_range("M", fields["M"], 1, 4096),
                height=height, width=width, coder=fields["coder"],
                quality=_check_quality(fields["quality"]) if "quality" in fields else None,
                lmbda=fields.get("lambda"), metric=fields["metric"], version=version)
    sizes = []
    for name, shape, nbytes in latents:
        for v in shape:
            _check_range(f"shape of {name}", v, 0, MAX_SIDE)
        # a length past the end of the data: parse() reports the file truncated
        sizes.append(_check_range(f"bytes of {name}", nbytes, 0, MAX_FILE_BYTES))
        f.sections.append(Section(name, shape, b""))
    return f, end + _CRC.size, sizes


def parse(data: bytes, max_pixels: int = MAX_PIXELS) -> LkdFile:
    """Reads a whole .lkd file from memory; raises CorruptFileError on anything wrong."""
    f, pos, sizes = read_header(data, max_pixels)
    expected = pos + sum(sizes) + _CRC.size * len(sizes)
    if len(data) != expected:
        raise CorruptFileError(f"truncated: {len(data)} bytes, the header declares {expected}" if len(data) < expected
                               else "trailing bytes after the last section")
    for s, n in zip(f.sections, sizes):
        s.data = bytes(data[pos:pos + n])
        if zlib.crc32(s.data) != _CRC.unpack_from(data, pos + n)[0]:
            raise CorruptFileError(f"section '{s.name}' CRC mismatch (corrupt file)")
        pos += n + _CRC.size
    return f
