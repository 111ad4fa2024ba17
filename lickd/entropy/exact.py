"""Device-independent entropy parameters: the hyper-synthesis evaluated exactly.

The decoder must rebuild the CDF index of every symbol of y exactly as the encoder chose it, from
``h_s(z_hat)``. In floating point that is not guaranteed across machines: a GPU (cuDNN, TF32,
another summation order) and a CPU differ in the last bits, and a scale that lands on the other
side of a scale-table boundary makes a file undecodable elsewhere (the lane checks catch it; the
file is still lost). CompressAI has this problem.

Here ``h_s`` (Conv2d / ConvTranspose2d / ReLU / LeakyReLU layers) runs in float64 on a
fixed-point grid where every operation is exact, so any summation order on any device gives the
same bits:

* weights are rounded to multiples of 2^-WEIGHT_BITS, activations (the input included) to
  multiples of 2^-ACT_BITS, biases to the product grid 2^-(ACT_BITS + WEIGHT_BITS);
* every product and partial sum is then an integer multiple of 2^-(ACT_BITS + WEIGHT_BITS)
  below 2^53 of them — exact in float64, whatever the order (GEMM and col2im only; no
  Winograd or FFT convolution is ever asked for) — because each layer's input is clamped to
  2^X with X set from the layer's weights (sum |w| * 2^X + |b| < 2^(53 - ACT_BITS - WEIGHT_BITS));
* LeakyReLU's slope is one correctly rounded multiplication (the same on every IEEE device); the
  next layer's input is rounded to the activation grid; the last conv's output is exact.

Rounding h_s's weights to 2^-18 and activations to 2^-14 moves its outputs by ~3e-4 (relative L2,
random-init N=128/M=192; trained activations are larger, so less): far less than a scale-table
step (~13 %), so the rate changes negligibly; reconstructions do not depend on it. Each layer's
input bound (2^15 for those weights) is far above what a hyper-synthesis produces; values beyond
it would be clamped, which is deterministic too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACT_BITS = 14
WEIGHT_BITS = 18
_MANTISSA_BITS = 53
#: version recorded in .lkd files (with the coder id): files depend on this exact arithmetic
EXACT_VERSION = 1


def _to_grid(v: Tensor, bits: int) -> Tensor:
    """Nearest multiple of 2^-bits (ties to even): scaling by a power of two and rint are exact."""
    return torch.round(v * 2.0**bits) / 2.0**bits


class _Layer:
    """One conv layer's weights on the grid, and the input bound that keeps its sums exact."""

    def __init__(self, m: nn.Module, device: torch.device):
        w = _to_grid(m.weight.detach().to(device, torch.float64), WEIGHT_BITS)
        b = m.bias.detach().to(device, torch.float64) if m.bias is not None else torch.zeros(
            m.out_channels, dtype=torch.float64, device=device)
        self.bias = _to_grid(b, ACT_BITS + WEIGHT_BITS)
        self.transposed = isinstance(m, nn.ConvTranspose2d)
        # sum |w| over everything one output can see (an upper bound for transposed convs)
        per_output = w.abs().sum(dim=(0, 2, 3)) if self.transposed else w.abs().sum(dim=(1, 2, 3))
        budget = 2.0**(_MANTISSA_BITS - ACT_BITS - WEIGHT_BITS) - float(self.bias.abs().max())
        worst = float(per_output.max())
        if budget <= 0 or worst == 0:
            bound_bits = 30 if budget > 0 else -1
        else:
            bound_bits = math.floor(math.log2(budget / worst)) - 1
        if bound_bits < 4:
            raise ValueError(f"{type(m).__name__} weights too large for exact evaluation (input bound 2^{bound_bits})")
        self.bound = 2.0**min(bound_bits, 30)
        self.stride, self.padding = m.stride, m.padding
        self.output_padding = getattr(m, "output_padding", (0, 0))
        self.kernel_size = m.kernel_size
        if self.transposed:  # [Cin, Cout, kh, kw] -> [Cout*kh*kw, Cin]
            self.matrix = w.reshape(w.size(0), -1).t().contiguous()
        else:  # [Cout, Cin, kh, kw] -> [Cout, Cin*kh*kw]
            self.matrix = w.reshape(w.size(0), -1)
        self.out_channels = m.out_channels

    def __call__(self, x: Tensor) -> Tensor:
        x = x.clamp(-self.bound, self.bound)
        bsz, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if self.transposed:
            oh = (h - 1) * sh - 2 * ph + kh + self.output_padding[0]
            ow = (w - 1) * sw - 2 * pw + kw + self.output_padding[1]
            cols = self.matrix @ x.reshape(bsz, x.size(1), h * w)  # [B, Cout*kh*kw, H*W]
            out = F.fold(cols, (oh, ow), (kh, kw), padding=(ph, pw), stride=(sh, sw))
        else:
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # [B, Cin*kh*kw, L]
            out = (self.matrix @ cols).reshape(bsz, self.out_channels, oh, ow)
        return out + self.bias.view(1, -1, 1, 1)


def _supported(m: nn.Module) -> bool:
    if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
        return True
    if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
        return m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
    return False


def exact_sequential(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` in exact fixed-point float64 (see the module doc); returns float64.

    Raises TypeError for layers other than Conv2d, ConvTranspose2d, ReLU and LeakyReLU.
    """
    layers = list(seq)
    for m in layers:
        if not _supported(m):
            raise TypeError(f"exact evaluation does not support {type(m).__name__}")
    cache = seq.__dict__.setdefault("_lickd_exact_cache", {})
    key = (x.device, tuple((p.data_ptr(), p._version) for p in seq.parameters()))
    if cache.get("key") != key:
        cache["key"], cache["layers"] = key, {i: _Layer(m, x.device) for i, m in enumerate(layers)
                                              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    compiled = cache["layers"]
    v = x.detach().to(torch.float64)
    for i, m in enumerate(layers):
        if i in compiled:  # every conv input goes onto the activation grid first
            v = compiled[i](_to_grid(v, ACT_BITS))
        else:  # exact (ReLU) or one correctly rounded multiplication (LeakyReLU)
            v = F.relu(v) if isinstance(m, nn.ReLU) else F.leaky_relu(v, m.negative_slope)
    return v


class ExactSequential(nn.Module):
    """A module whose forward is ``exact_sequential(seq, x)`` (so forward hooks, e.g. lickd bench's
    stage timer, see it). It holds ``seq`` without registering it: its owner's ``state_dict`` and
    parameters stay as they were."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.__dict__["seq"] = seq

    def forward(self, x: Tensor) -> Tensor:
        return exact_sequential(self.seq, x)
