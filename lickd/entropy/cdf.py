"""Deterministic integer quantisation of probability tables into rANS CDFs.

Layout is CompressAI's: a table of n symbols (the last one the escape, carrying the tail mass)
is a row ``0 = c_0 < c_1 < ... < c_n = 2^P`` stored in an int32 tensor padded to a common width,
with ``cdf_length = n + 1``. A weights file stores them packed (``pack_cdfs``): the rows one
after another without the padding, which is most of a padded table set.
"""
from __future__ import annotations

import torch
from torch import Tensor


def pmf_to_quantized_cdf(pmf: Tensor, lengths: Tensor, precision: int) -> Tensor:
    """Quantise each row of ``pmf`` ([T, L], zero past ``lengths[t]``) to integer frequencies
    summing to ``2**precision``, every symbol >= 1, by largest remainder; returns the CDFs
    ([T, L + 1] int32, padded with zeros past ``lengths[t] + 1``).

    Largest remainder keeps each frequency within one unit of its exact share after the
    minimum of one, so the rate lost to quantisation is tiny; ties break on the lower index,
    so the result depends only on the float64 values.
    """
    if pmf.dim() != 2:
        raise ValueError("pmf must be [tables, symbols]")
    total = 1 << int(precision)
    pmf = pmf.detach().to(device="cpu", dtype=torch.float64)
    lengths = lengths.detach().to(device="cpu", dtype=torch.int64)
    n_tables, width = pmf.shape
    if int(lengths.max()) > width or int(lengths.min()) < 2:
        raise ValueError("every table needs between 2 and pmf.size(1) symbols")
    if int(lengths.max()) > total:
        raise ValueError(f"a table has more symbols than 2^{precision} can give frequency 1")
    valid = _row_mask(lengths, width)
    p = torch.where(valid & torch.isfinite(pmf), pmf.clamp(min=0), torch.zeros(()).double())
    mass = p.sum(1, keepdim=True)
    p = torch.where(mass > 0, p / mass.clamp(min=1e-300), valid.double() / lengths[:, None].double())
    spare = (total - lengths)[:, None].double()  # what is left after the minimum of 1 each
    share = p * spare
    freq = torch.floor(share)
    left = (spare[:, 0] - freq.sum(1)).round().to(torch.int64)  # in [0, lengths)
    frac = torch.where(valid, share - freq, torch.full_like(share, -1.0))
    order = torch.sort(-frac, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(width).expand(n_tables, width).contiguous())
    freq = freq.to(torch.int64) + (rank < left[:, None]).to(torch.int64) + valid.to(torch.int64)
    freq = freq * valid
    # Float rounding can leave the sum one unit off: settle it on each row's largest bin.
    fix = total - freq.sum(1)
    freq.scatter_add_(1, freq.argmax(1, keepdim=True), fix[:, None])
    cdf = torch.zeros(n_tables, width + 1, dtype=torch.int64)
    cdf[:, 1:] = torch.cumsum(freq, 1)
    cdf = cdf * _row_mask(lengths + 1, width + 1)
    assert bool((cdf.gather(1, lengths[:, None]) == total).all()), "CDF quantisation lost mass"
    return cdf.to(torch.int32)


#: the most padded entries tables may unpack to (64 MB of int32): a packed file's lengths decide
#: the padded size, so a small hostile file could otherwise ask for gigabytes
MAX_PADDED_ENTRIES = 1 << 24
_INTEGER_DTYPES = (torch.int32, torch.int64)


def check_tables(cdf: Tensor, cdf_length: Tensor, offset: Tensor | None = None) -> None:
    """ValueError unless ``cdf`` (padded [T, W] or packed [sum of lengths]), ``cdf_length`` and
    ``offset`` ([T] each) are integer tensors of one table set whose every length is in
    3..65537 (what the coder takes: two symbols and the escape at least, 65535 symbols at most)."""
    if any(t is not None and t.dtype not in _INTEGER_DTYPES for t in (cdf, cdf_length, offset)):
        raise ValueError("CDF tables, lengths and offsets must be integer tensors")
    if cdf_length.dim() != 1 or cdf_length.numel() == 0:
        raise ValueError(f"cdf_length must list one length per table, got shape {tuple(cdf_length.shape)}")
    n = cdf_length.numel()
    if offset is not None and offset.shape != (n,):
        raise ValueError(f"{tuple(offset.shape)} offsets for {n} tables")
    lengths = cdf_length.detach().cpu().long()
    low, high = int(lengths.min()), int(lengths.max())
    if low < 3 or high > 65537:
        raise ValueError(f"CDF lengths must be in 3..65537, got {low}..{high}")
    if cdf.dim() == 2:
        if cdf.size(0) != n or high > cdf.size(1):
            raise ValueError(f"{tuple(cdf.shape)} padded tables for {n} lengths up to {high}")
    elif cdf.dim() == 1:
        if int(lengths.sum()) != cdf.numel():
            raise ValueError(f"packed CDF tables of {cdf.numel()} values do not match their lengths "
                             f"(sum {int(lengths.sum())})")
        if n * high > MAX_PADDED_ENTRIES:
            raise ValueError(f"{n} tables of up to {high} entries are more than lickd unpacks")
    else:
        raise ValueError(f"CDF tables must be padded [T, W] or packed [N], got shape {tuple(cdf.shape)}")


def _row_mask(lengths: Tensor, width: int) -> Tensor:
    """[T, width] bool: True in row t's first ``lengths[t]`` columns."""
    return torch.arange(width)[None, :] < lengths.detach().cpu().long()[:, None]


def pack_cdfs(cdf: Tensor, cdf_length: Tensor) -> Tensor:
    """The padded CDF rows ``cdf`` [T, W] as one int32 vector: row t's first ``cdf_length[t]``
    values, row after row (what a weights file stores; ``unpack_cdfs`` undoes it)."""
    check_tables(cdf, cdf_length)
    if cdf.dim() != 2:
        raise ValueError("pack_cdfs takes padded tables [T, W]")
    return cdf.detach().cpu().to(torch.int32)[_row_mask(cdf_length, cdf.size(1))]


def unpack_cdfs(packed: Tensor, cdf_length: Tensor, checked: bool = False) -> Tensor:
    """``pack_cdfs``'s vector back to zero-padded rows [T, max(cdf_length)] (int32); ValueError
    for anything ``check_tables`` refuses (a damaged or foreign file), unless the caller has
    ``checked`` them already."""
    if not checked:
        check_tables(packed, cdf_length)
    if packed.dim() != 1:
        raise ValueError("unpack_cdfs takes packed tables [N]")
    out = torch.zeros(cdf_length.numel(), int(cdf_length.max()), dtype=torch.int32)
    out[_row_mask(cdf_length, out.size(1))] = packed.to(torch.int32)
    return out
