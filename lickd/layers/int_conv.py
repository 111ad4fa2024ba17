"""Convolutions in integer arithmetic on the CPU: int16 activations times int16 weights, summed in
int32 by ``lickd._intconv`` (csrc/int_conv.cpp: AVX2 ``vpmaddwd``; channels last, no im2col).

Its user is the exact entropy parameters (``lickd.entropy.exact``, version 2): 8-bit weights and
11-bit activations on power-of-two steps, where the int32 sums and their float64 finish give the
same bits as the float32-GEMM path on every device. (An integer synthesis transform on these
kernels was measured and dropped: docs/architecture.md, "Integer synthesis".)

A layer is an ``IntLayer``: the integer weights of a Conv2d or ConvTranspose2d (the caller rounds
them and chooses the steps), packed for the kernel. A transposed convolution of stride s runs as
s*s ordinary correlations, one per output phase (the outputs o with (o + padding) mod s = q see
only the taps q, q + s, ...), each written straight into its outputs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

try:  # built with the rANS coder (setup.py); absent only in an unbuilt source checkout
    from .. import _intconv as native
except ImportError:  # pragma: no cover
    native = None


def available() -> bool:
    """Whether lickd._intconv runs a vector kernel on this CPU (its plain C++ fallback computes the
    same sums but is slower than PyTorch's float convolutions, so callers keep those there)."""
    return native is not None and native.best_isa() != "scalar"


def pack(kernel: Tensor) -> np.ndarray:
    """Integer weights [Cout, Cin, kh, kw] as lickd._intconv takes them: int16 [ceil(Cout / 16),
    kh, kw, ceil(Cin / 2), 16, 2] (per block of 16 outputs, tap and pair of input channels, the
    16 outputs' (even, odd) channel weights; zeros pad both counts)."""
    cout, cin, kh, kw = kernel.shape
    block = native.OUT_BLOCK
    blocks, pairs = -(-cout // block), -(-cin // 2)
    padded = torch.zeros(blocks * block, pairs * 2, kh, kw, dtype=torch.int16)
    padded[:cout, :cin] = kernel.cpu().to(torch.int16)
    return padded.view(blocks, block, pairs, 2, kh, kw).permute(0, 4, 5, 2, 1, 3).contiguous().numpy()


def transposed_phases(w_int: Tensor, stride: tuple[int, int]) -> list[tuple[int, int, Tensor]]:
    """The output phases of a transposed convolution with integer weights ``w_int`` [Cin, Cout, kh,
    kw]: (qh, qw, kernel [Cout, Cin, mh, mw]) for each phase some tap reaches, the kernel a
    correlation over inputs n - mh + 1 .. n for output phase position n (taps reversed)."""
    (_, _, kh, kw), (sh, sw) = w_int.shape, stride
    phases = []
    for qh in range(sh):
        for qw in range(sw):
            taps_h, taps_w = list(range(qh, kh, sh))[::-1], list(range(qw, kw, sw))[::-1]
            if taps_h and taps_w:  # kernel[o, i, a, b] = w[i, o, taps_h[a], taps_w[b]]
                phases.append((qh, qw, w_int[:, :, taps_h][:, :, :, taps_w].permute(1, 0, 2, 3)))
    return phases


def output_size(size: tuple[int, int], m) -> tuple[int, int]:
    """(OH, OW) of the convolution (``m.transposed``: transposed) of an input of ``size``; ``m``
    has the layer's kernel_size, stride, padding and output_padding."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, m.kernel_size, m.stride, m.padding
    if not m.transposed:
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return (h - 1) * sh - 2 * ph + kh + m.output_padding[0], (w - 1) * sw - 2 * pw + kw + m.output_padding[1]


def phase_range(q: int, padding: int, stride: int, out: int) -> tuple[int, int]:
    """(n0, n1): the positions n of output phase q, the outputs o = stride * n + q - padding in
    [0, out) (empty where n1 < n0)."""
    return -((q - padding) // stride), (out - 1 + padding - q) // stride


class IntLayer:
    """A Conv2d or ConvTranspose2d ``m`` (``transposed``) over channels-last inputs in integer
    arithmetic, from its integer weights ``w_int`` (``m.weight``'s layout, |w| <= 127), their steps
    ``w_steps`` (float64 [Cout]) and the bias (float64 [Cout]): output = float32(double(sum) *
    a_step * w_step + bias)."""

    def __init__(self, m: nn.Module, transposed: bool, w_int: Tensor, w_steps: Tensor, bias: Tensor):
        self.transposed = transposed
        self.out_channels = m.out_channels
        self.kernel_size, self.stride, self.padding = m.kernel_size, m.stride, m.padding
        self.output_padding = getattr(m, "output_padding", (0, 0))
        self.bias = bias.cpu().to(torch.float64)
        self.w_steps = w_steps.cpu().to(torch.float64)
        if not self.transposed:
            self.kernels = [pack(w_int)]
        else:
            self.phases = transposed_phases(w_int, self.stride)
            self.kernels = [pack(k) for _, _, k in self.phases]
        self._bias, self._w_steps = self.bias.numpy(), self.w_steps.numpy()
        self.reduction = max(k.shape[1] * k.shape[2] * k.shape[3] * 2 for k in self.kernels)

    def finish_zero(self, bsz: int, a_steps: Tensor) -> Tensor:
        """The output of a sum of 0 ([B, 1, 1, Cout]): what outputs no tap reaches hold."""
        scale = a_steps.view(-1, 1, 1, 1) * self.w_steps.view(1, 1, 1, -1)
        return (torch.zeros(bsz, 1, 1, 1, dtype=torch.float64) * scale + self.bias.view(1, 1, 1, -1)).float()

    def __call__(self, v: Tensor, a_steps: Tensor, threads: int) -> Tensor:
        """The layer's float32 output [B, OH, OW, Cout] for ``v`` (float32 [B, H, W, Cin],
        channels last, NaN-free) rounded to the grid ``a_steps`` (float64 [B] per image)."""
        bsz, h, w, cin = v.shape
        steps = a_steps.contiguous().numpy()
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = output_size((h, w), self)
        if not self.transposed:
            ints = self._quantize(v, steps, (ph, ph, pw, pw), threads)
            out = torch.empty(bsz, oh, ow, self.out_channels, dtype=torch.float32)
            self._conv(ints, 0, steps, out, (kh, kw), (sh, sw), (0, 0), (0, oh), (0, ow), (0, 0), (1, 1), threads)
            return out
        # phase (qh, qw): outputs o = s * n + q - p for n in [n0, n1], from inputs n - m + 1 .. n
        ranges = [phase_range(qh, ph, sh, oh) + phase_range(qw, pw, sw, ow) for qh, qw, _ in self.phases]
        top = max(k.size(2) for _, _, k in self.phases) - 1
        left = max(k.size(3) for _, _, k in self.phases) - 1
        bottom = max([0] + [n1h + 1 - h for _, n1h, _, _ in ranges])
        right = max([0] + [n1w + 1 - w for _, _, _, n1w in ranges])
        ints = self._quantize(v, steps, (top, bottom, left, right), threads)
        out = torch.empty(bsz, oh, ow, self.out_channels, dtype=torch.float32)
        if len(self.phases) < sh * sw or any(n1h < n0h or n1w < n0w for n0h, n1h, n0w, n1w in ranges):
            out.copy_(self.finish_zero(bsz, a_steps).expand_as(out))  # outputs no tap reaches
        for j, ((qh, qw, k), (n0h, n1h, n0w, n1w)) in enumerate(zip(self.phases, ranges)):
            if n1h < n0h or n1w < n0w:
                continue
            mh, mw = k.size(2), k.size(3)
            self._conv(ints, j, steps, out, (mh, mw), (1, 1), (top - mh + 1, left - mw + 1), (n0h, n1h + 1),
                       (n0w, n1w + 1), (qh - ph, qw - pw), (sh, sw), threads)
        return out

    @staticmethod
    def _quantize(v: Tensor, steps: np.ndarray, pads: tuple[int, int, int, int], threads: int) -> Tensor:
        """``v`` on the grid ``steps`` as int16, zero-padded (top, bottom, left, right) and to an
        even channel count."""
        bsz, h, w, cin = v.shape
        top, bottom, left, right = pads
        ints = torch.empty(bsz, top + h + bottom, left + w + right, cin + cin % 2, dtype=torch.int16)
        native.quantize(v.numpy(), steps, ints.numpy(), (top, left), threads)
        return ints

    def _conv(self, ints, j, steps, out, kernel, stride, offset, rows, cols, origin, step, threads):
        native.conv(ints.numpy(), self.kernels[j], steps, self._w_steps, self._bias, out.numpy(), kernel, stride,
                    offset, rows, cols, origin, step, threads)


def sanitize_absmax(v: Tensor, threads: int) -> Tensor:
    """torch.nan_to_num(v, nan=0) in place on a contiguous float32 tensor, and each image's largest
    |value| (float32 [B]) from the same pass."""
    return torch.from_numpy(native.sanitize_absmax(v.numpy(), threads))


__all__ = ["IntLayer", "available", "output_size", "pack", "phase_range", "sanitize_absmax", "transposed_phases"]
