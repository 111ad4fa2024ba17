"""Codecs under evaluation: lickd students and the classical anchors (JPEG, WebP, AVIF via Pillow).

Every codec maps an 8-bit RGB image to a file's bytes and back, so all are measured the same
way: bits per pixel from the real file size, metrics on the decoded 8-bit image.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, features

#: Default quality sweeps (each codec's own scale, higher = better).
DEFAULT_QUALITIES = {
    "jpeg": (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "webp": (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "avif": (10, 20, 30, 40, 50, 60, 70, 80, 90),
}
SUBSAMPLING = ("default", "444")


@dataclass
class Encoded:
    data: bytes
    payload_bytes: int  # bytes of coded image data, without container headers where known


class PillowCodec:
    """JPEG, WebP or AVIF through Pillow at one quality setting.

    Subsampling: ``default`` keeps each encoder's default (JPEG and AVIF 4:2:0, WebP lossy is
    always 4:2:0); ``444`` asks JPEG and AVIF for full-resolution chroma (not possible for lossy
    WebP, which is refused). JPEG uses optimised Huffman tables; AVIF runs at speed 6.
    """

    def __init__(self, kind: str, quality: int, subsampling: str = "default"):
        if kind not in DEFAULT_QUALITIES:
            raise ValueError(f"unknown codec {kind!r} (known: {', '.join(DEFAULT_QUALITIES)})")
        if subsampling not in SUBSAMPLING:
            raise ValueError(f"subsampling must be one of {SUBSAMPLING}")
        if kind == "webp" and subsampling == "444":
            raise ValueError("lossy WebP is always 4:2:0")
        feature = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}[kind]
        if not features.check(feature):
            raise RuntimeError(f"this Pillow has no {kind.upper()} support")
        self.kind, self.quality, self.subsampling = kind, int(quality), subsampling
        self.library_version = features.version(feature)

    @property
    def name(self) -> str:
        return {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF"}[self.kind] + (
            " 4:4:4" if self.subsampling == "444" else "")

    def description(self) -> str:
        lib = {"jpeg": "libjpeg", "webp": "libwebp", "avif": "libavif"}[self.kind]
        chroma = "4:4:4" if self.subsampling == "444" else "4:2:0 (encoder default)"
        extra = {"jpeg": ", optimize=True", "webp": ", method=6", "avif": ", speed=6"}[self.kind]
        return f"{self.name} via Pillow {Image.__version__} ({lib} {self.library_version}), {chroma}{extra}"

    def _save_options(self) -> dict:
        if self.kind == "jpeg":
            return {"format": "JPEG", "quality": self.quality, "optimize": True,
                    **({"subsampling": 0} if self.subsampling == "444" else {})}
        if self.kind == "webp":
            return {"format": "WEBP", "quality": self.quality, "method": 6}
        return {"format": "AVIF", "quality": self.quality, "speed": 6,
                **({"subsampling": "4:4:4"} if self.subsampling == "444" else {})}

    def encode(self, img: np.ndarray) -> Encoded:
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, **self._save_options())
        data = buf.getvalue()
        return Encoded(data, len(data))

    def decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


class LickdCodec:
    """A lickd StudentCodec; payload bytes exclude the .lkd header and CRCs."""

    def __init__(self, codec, fused: Optional[str] = None, quality: Optional[float] = None):
        self.codec = codec
        self.fused = fused  # storage dtype of lickd.accelerate'd transforms (and how they ran), or None
        # one point of a curve: a fixed-rate model's own quality, or the one a variable-rate model codes at
        self.quality = codec.quality_for(quality)
        self.name = f"lickd {codec.info.name}"

    def description(self) -> str:
        i = self.codec.info
        low, high = i.offered_range
        rate = f"variable rate (qualities {low:g}..{high:g})" if self.codec.variable_rate else f"lambda={i.lmbda}"
        return (f"lickd {i.name}@{i.short_hash}: {i.architecture} N={i.N} M={i.M} {rate} "
                f"({i.metric}), device {self.codec.device.type}"
                + (f", g_a/g_s fused kernels {self.fused}" if self.fused else ""))

    def encode(self, img: np.ndarray) -> Encoded:
        from ..container import parse

        data = self.codec.compress(img, quality=self.quality if self.codec.variable_rate else None)
        return Encoded(data, parse(data).payload_bytes())

    def decode(self, data: bytes) -> np.ndarray:
        return self.codec.decompress(data, output="numpy")

    def synchronize(self) -> None:
        from ..device import synchronize

        synchronize(self.codec.device)
