"""How a model codes its latents: one options object the codec passes down.

A model's ``compress``/``decompress``/``decode_latents`` take ``options`` and hand it to its
entropy models, which hand the coder settings to the rANS coder. Nothing is stored on the
model, so one model serves both modes at once:

- ``CodingOptions()`` (the default): CompressAI's contract. Entropy parameters come from the
  float h_s, bit-exact with CompressAI's own models; every stream carries its own header.
- ``LKD_FILE_OPTIONS``: what ``.lkd`` files hold. Entropy parameters come from the exact h_s
  (lickd.entropy.exact, ``exact_version``: the same CDF indexes on every device and thread count)
  and the streams are *bare*: without the magic, version, symbol count and table hash that the
  container already records (csrc/rans_format.h; docs/format.md).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from .exact import EXACT_VERSION, EXACT_VERSIONS

ENTROPY_PARAMETERS = ("float", "exact")


@dataclasses.dataclass(frozen=True)
class CodingOptions:
    #: how the Gaussian parameters are derived from z_hat: "float" (CompressAI's) or "exact"
    entropy_parameters: Literal["float", "exact"] = "float"
    #: which exact arithmetic (lickd.entropy.exact; a file's coder id records it)
    exact_version: int = EXACT_VERSION
    #: streams without their own header (only a container that records it can decode them)
    bare: bool = False
    #: rANS interleaving: lanes per chunk and chunks per stream (0: the coder chooses)
    lanes: int = 0
    chunks: int = 0
    #: the coder may add lanes/chunks while the stream grows by at most this fraction
    max_overhead: float = 0.0025
    #: CPU coder threads (0: the coder chooses); ignored by the CUDA coder
    threads: int = 0

    def __post_init__(self):
        if self.entropy_parameters not in ENTROPY_PARAMETERS:
            raise ValueError(f"entropy_parameters must be one of {ENTROPY_PARAMETERS}, "
                             f"got {self.entropy_parameters!r}")
        if self.exact_version not in EXACT_VERSIONS:
            raise ValueError(f"exact_version must be one of {EXACT_VERSIONS}, got {self.exact_version!r}")
        for name in ("lanes", "chunks", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.max_overhead, bool) or not isinstance(self.max_overhead, (int, float)) \
                or not 0 <= self.max_overhead < 1:
            raise ValueError(f"max_overhead must be a fraction in [0, 1), got {self.max_overhead!r}")

    @property
    def exact(self) -> bool:
        return self.entropy_parameters == "exact"

    def encoder_kwargs(self, cuda: bool = False) -> dict:
        """Keyword arguments of TableSet.encode (``cuda``: of TableSet.encode_cuda)."""
        kw = {"lanes": self.lanes, "chunks": self.chunks, "max_overhead": self.max_overhead, "bare": self.bare}
        return kw if cuda else {**kw, "threads": self.threads}

    def decoder_kwargs(self, cuda: bool = False) -> dict:
        """Keyword arguments of TableSet.decode (``cuda``: of TableSet.decode_cuda)."""
        return {"bare": self.bare} if cuda else {"bare": self.bare, "threads": self.threads}

    def replace(self, **changes) -> "CodingOptions":
        return dataclasses.replace(self, **changes)


#: CompressAI's behaviour (the default everywhere)
DEFAULT = CodingOptions()
#: what .lkd files hold: exact entropy parameters, bare streams
LKD_FILE_OPTIONS = CodingOptions(entropy_parameters="exact", bare=True)

__all__ = ["LKD_FILE_OPTIONS", "DEFAULT", "ENTROPY_PARAMETERS", "CodingOptions"]
