"""The entropy coder: packed CDF tables and the rANS encode/decode of symbol tensors.

Thin layer over the C++ extension ``lickd._rans`` (stream format in csrc/rans_format.h):
tensors go in and out without Python lists, and the GIL is released while coding.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from ..errors import CorruptFileError

try:
    from .. import _rans
except ImportError as e:  # a source checkout without a build shadows the installed package
    raise ImportError("lickd's C++ coder (lickd._rans) is not built here: install with 'pip install .' "
                      "(or 'pip install -e .' for development) and run from outside the source folder") from e

StreamError = _rans.StreamError

#: Version of the rANS stream format (csrc/rans_format.h) and this coder's name for it.
STREAM_VERSION = int(_rans.STREAM_VERSION)
CODER_ID = f"rans32x16-v{STREAM_VERSION}"


def _int32_numpy(t: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, Tensor):
        t = t.detach().to(device="cpu", dtype=torch.int32).reshape(-1).numpy()
    return np.ascontiguousarray(t, dtype=np.int32).reshape(-1)


class TableSet:
    """Validated, packed CDF tables (CompressAI layout) ready for coding.

    Built once per entropy model; the CRC32 ``hash`` goes into every stream so that decoding
    with other tables fails loudly instead of returning garbage.
    """

    def __init__(self, cdf: Tensor, cdf_length: Tensor, offset: Tensor, precision: int):
        cdf_np = np.ascontiguousarray(cdf.detach().to(device="cpu", dtype=torch.int32).numpy())
        self._impl = _rans.TableSet(cdf_np, _int32_numpy(cdf_length), _int32_numpy(offset), int(precision))
        self.precision = int(precision)
        self.hash = int(self._impl.hash)
        self.n_tables = int(self._impl.n_tables)
        self._device_tables: dict = {}  # CUDA device index -> tables uploaded there

    def encode(self, symbols: Tensor, indexes: Tensor, *, lanes: int = 0, chunks: int = 0,
               max_overhead: float = 0.0025, threads: int = 0, bare: bool = False) -> bytes:
        """Codes ``symbols[i]`` with table ``indexes[i]`` (flattened, any int dtype). ``bare``
        leaves out what a container already records (magic, version, symbol count, table hash:
        csrc/rans_format.h); such a stream decodes only with ``bare=True``."""
        if symbols.numel() != indexes.numel():
            raise ValueError("symbols and indexes must have the same number of elements")
        return _rans.encode(self._impl, _int32_numpy(symbols), _int32_numpy(indexes),
                            lanes=lanes, chunks=chunks, max_overhead=max_overhead, threads=threads, bare=bare)

    def decode(self, data: bytes, indexes: Tensor, *, threads: int = 0, bare: bool = False) -> Tensor:
        """Decodes one symbol per element of ``indexes``; returns int32 of the same shape (CPU).

        Raises CorruptFileError when the stream is corrupt, truncated or coded with other tables.
        """
        try:
            out = _rans.decode(self._impl, data, _int32_numpy(indexes), threads=threads, bare=bare)
        except StreamError as e:
            raise CorruptFileError(str(e)) from None
        return torch.from_numpy(out).reshape(indexes.shape)

    def _on_device(self, device: torch.device):
        """These tables in the memory of CUDA ``device`` (uploaded once)."""
        key = device.index if device.index is not None else torch.cuda.current_device()
        if key not in self._device_tables:
            with torch.cuda.device(key):
                self._device_tables[key] = _rans.DeviceTables(self._impl)
        return self._device_tables[key]

    def encode_cuda(self, symbols: list[Tensor], indexes: list[Tensor], *, lanes: int = 0, chunks: int = 0,
                    max_overhead: float = 0.0025, bare: bool = False) -> list[bytes]:
        """Codes many (symbols, indexes) pairs of CUDA tensors in one set of launches on the current
        stream; the symbols never leave the GPU, only the streams' bytes do. Each stream is byte
        for byte what ``encode`` writes for the same input and options."""
        if not cuda_coder_built():
            raise RuntimeError("this lickd was built without the CUDA coder")
        if len(symbols) != len(indexes) or not all(t.is_cuda for t in (*symbols, *indexes)):
            raise ValueError("one CUDA symbol tensor and one CUDA index tensor per stream are needed")
        if any(s.numel() != i.numel() for s, i in zip(symbols, indexes)):
            raise ValueError("symbols and indexes must have the same number of elements")
        if not symbols:
            return []
        device = symbols[0].device
        sym = [s.to(device=device, dtype=torch.int32).contiguous() for s in symbols]
        idx = [i.to(device=device, dtype=torch.int32).contiguous() for i in indexes]
        with torch.cuda.device(device):
            return _rans.encode_cuda(self._on_device(device), [s.data_ptr() for s in sym], [i.data_ptr() for i in idx],
                                     [s.numel() for s in sym], lanes=lanes, chunks=chunks, max_overhead=max_overhead,
                                     stream=torch.cuda.current_stream(device).cuda_stream, bare=bare)

    def decode_cuda(self, streams: list[bytes], indexes: list[Tensor], *, bare: bool = False) -> list[Tensor]:
        """Decodes many streams in one launch on the current CUDA stream of the indexes' device;
        returns int32 CUDA tensors shaped like the indexes. Same errors as ``decode``."""
        if not cuda_coder_built():
            raise RuntimeError("this lickd was built without the CUDA coder")
        if len(streams) != len(indexes) or not all(i.is_cuda for i in indexes):
            raise ValueError("one CUDA index tensor per stream is needed")
        if not streams:
            return []
        device = indexes[0].device
        idx = [i.to(device=device, dtype=torch.int32).contiguous() for i in indexes]
        out = [torch.empty_like(i) for i in idx]
        with torch.cuda.device(device):
            try:
                _rans.decode_cuda(self._on_device(device), [bytes(s) for s in streams],
                                  [i.data_ptr() for i in idx], [o.data_ptr() for o in out], [i.numel() for i in idx],
                                  torch.cuda.current_stream(device).cuda_stream, bare=bare)
            except StreamError as e:
                raise CorruptFileError(str(e)) from None
        return [o.reshape(i.shape) for o, i in zip(out, indexes)]


def cuda_coder_built() -> bool:
    """Whether this build has the CUDA coder (it still needs a GPU at run time)."""
    return bool(_rans.WITH_CUDA)


def use_cuda_coder() -> bool:
    """The entropy models code on the GPU only when asked to (LICKD_CUDA_CODER=1): the CUDA coder
    runs in CI on a CPU emulator of the GPU (tests/cuda_emu) but has not yet been validated on a
    GPU (see the coder issue); the CPU coder reads and writes the same streams."""
    return cuda_coder_built() and os.environ.get("LICKD_CUDA_CODER") == "1" and torch.cuda.is_available()


def stream_info(data: bytes, bare_symbols: int | None = None) -> dict:
    """Header fields of a coded stream (precision, lanes, chunks, sizes); a bare stream needs its
    symbol count."""
    try:
        return _rans.stream_info(bytes(data), -1 if bare_symbols is None else int(bare_symbols))
    except StreamError as e:
        raise CorruptFileError(str(e)) from None
