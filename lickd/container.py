"""The ``.lkd`` file: a self-describing, checksummed container of coded latents.

Layout (little-endian), format version 1::

    magic      4 bytes  b"\\x8bLKD"   (a non-ASCII first byte, like PNG's, catches text-mode damage)
    version    u8       1
    flags      u8       0 (reserved; a reader rejects unknown flags)
    header_len u16      length of the header
    header     JSON (UTF-8): model name, weights hash, architecture, N, M, quality, lambda, metric,
               original size, coder id, and the list of latent sections with shapes and lengths
    u32        CRC32 of the header
    sections   one per latent, in header order: the coded stream, then its u32 CRC32

The reader checks everything before any network runs: magic, version, header CRC, field types
and ranges, that the section lengths add up to the file size exactly, and every section CRC.
Memory stays bounded by the file size plus a pixel limit on the declared image size.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

from .errors import CorruptFileError

MAGIC = b"\x8bLKD"
FORMAT_VERSION = 1
#: Same default as Pillow's decompression-bomb limit.
MAX_PIXELS = 89_478_485
MAX_SIDE = 65_535
MAX_SECTIONS = 16

_PREFIX = struct.Struct("<4sBBH")
_CRC = struct.Struct("<I")


@dataclass
class Section:
    name: str
    shape: tuple[int, ...]  # (C, H, W) of the latent
    data: bytes


@dataclass
class LkdFile:
    model: str
    weights: str  # sha256 prefix of the weights file
    architecture: str
    N: int
    M: int
    height: int
    width: int
    coder: str
    quality: int | None = None
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

    def to_bytes(self) -> bytes:
        header = json.dumps(self.header_dict(), separators=(",", ":"), sort_keys=True).encode()
        if len(header) > 0xFFFF:
            raise ValueError("header too large")
        out = [_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header)), header, _CRC.pack(zlib.crc32(header))]
        for s in self.sections:
            out += [s.data, _CRC.pack(zlib.crc32(s.data))]
        return b"".join(out)


def _field(h: dict, key: str, kind, *, low=None, high=None, optional=False):
    v = h.get(key)
    if v is None and optional:
        return None
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        raise CorruptFileError(f"header field '{key}' is missing or of the wrong type")
    if low is not None and v < low or high is not None and v > high:
        raise CorruptFileError(f"header field '{key}' out of range ({v})")
    return v


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
    try:
        h = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptFileError("header is not valid JSON") from None
    if not isinstance(h, dict):
        raise CorruptFileError("header is not a JSON object")
    size = h.get("size")
    if not (isinstance(size, list) and len(size) == 2):
        raise CorruptFileError("header field 'size' is missing or malformed")
    height = _field({"h": size[0]}, "h", int, low=1, high=MAX_SIDE)
    width = _field({"w": size[1]}, "w", int, low=1, high=MAX_SIDE)
    if height * width > max_pixels:
        raise CorruptFileError(f"image of {width}x{height} exceeds the limit of {max_pixels} pixels")
    latents = h.get("latents")
    if not (isinstance(latents, list) and 1 <= len(latents) <= MAX_SECTIONS):
        raise CorruptFileError("header field 'latents' is missing or malformed")
    f = LkdFile(
        model=_field(h, "model", str), weights=_field(h, "weights", str),
        architecture=_field(h, "architecture", str),
        N=_field(h, "N", int, low=1, high=4096), M=_field(h, "M", int, low=1, high=4096),
        height=height, width=width, coder=_field(h, "coder", str),
        quality=_field(h, "quality", int, low=0, high=1000, optional=True),
        lmbda=_field(h, "lambda", (int, float), low=0, optional=True),
        metric=_field(h, "metric", str), version=version,
    )
    sizes = []
    for entry in latents:
        if not isinstance(entry, dict):
            raise CorruptFileError("malformed latent entry in header")
        shape = entry.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SIDE for v in shape)):
            raise CorruptFileError("malformed latent shape in header")
        sizes.append(_field(entry, "bytes", int, low=0, high=len(data)))
        f.sections.append(Section(_field(entry, "name", str), tuple(shape), b""))
    return f, end + _CRC.size, sizes


def parse(data: bytes, max_pixels: int = MAX_PIXELS) -> LkdFile:
    """Reads a whole .lkd file from memory; raises CorruptFileError on anything wrong."""
    f, pos, sizes = read_header(data, max_pixels)
    expected = pos + sum(sizes) + _CRC.size * len(sizes)
    if len(data) != expected:
        raise CorruptFileError("truncated file" if len(data) < expected else "trailing bytes after the last section")
    for s, n in zip(f.sections, sizes):
        s.data = bytes(data[pos:pos + n])
        if zlib.crc32(s.data) != _CRC.unpack_from(data, pos + n)[0]:
            raise CorruptFileError(f"section '{s.name}' CRC mismatch (corrupt file)")
        pos += n + _CRC.size
    return f
