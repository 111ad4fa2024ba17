"""Deterministic integer quantisation of probability tables into rANS CDFs.

Layout is CompressAI's: a table of n symbols (the last one the escape, carrying the tail mass)
is a row ``0 = c_0 < c_1 < ... < c_n = 2^P`` stored in an int32 tensor padded to a common width,
with ``cdf_length = n + 1``.
"""
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
    valid = torch.arange(width)[None, :] < lengths[:, None]
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
    cdf = cdf * (torch.arange(width + 1)[None, :] <= lengths[:, None])
    assert bool((cdf.gather(1, lengths[:, None]) == total).all()), "CDF quantisation lost mass"
    return cdf.to(torch.int32)
