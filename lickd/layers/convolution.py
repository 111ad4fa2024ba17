"""The strided convolutions of the Ballé-family transforms (CompressAI's ``conv``/``deconv``).

``PhaseConvTranspose2d`` is PyTorch's transposed convolution, with its parameters and
``state_dict``; without autograd, in float32 on the CPU with a channels_last input and few output
channels (the last layer of g_s, which makes the image) it runs as one ordinary convolution with
``stride²·out_channels`` outputs followed by a depth-to-space copy (``phase_conv_transpose``).
oneDNN's transposed convolution with 3 output channels is slow: measured on the 2-vCPU AVX2
machine at 256×384×64 → 512×768×3, 30-43 ms (~12 GMAC/s) against 23-31 ms for the phase form
(its zero taps included, the copy ~3 ms); with 64 output channels the transposed convolution is
the faster, so those keep it.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

#: a transposed convolution with fewer output channels than this takes the phase form on the CPU
PHASE_OUT_CHANNELS_BELOW = 16


def plain_layer_type(m: nn.Module) -> type:
    """The PyTorch layer ``m`` computes: its own type, or the one a subclass declares it equals
    (``plain_equivalent``). Code that handles plain PyTorch convolutions only (the fused kernels,
    the exact entropy-parameter path) asks this, so that CompressAI's MaskedConv2d stays out and
    lickd's PhaseConvTranspose2d is in."""
    return getattr(type(m), "plain_equivalent", type(m))


def parameters_key(tensors) -> tuple:
    """What a cache of values derived from ``tensors`` is valid for: each one's storage, version
    and shape (a replaced tensor, an in-place update or a resize changes it)."""
    return tuple(None if t is None else (t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Convolution that divides H and W by ``stride`` ("same" padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Transposed convolution that multiplies H and W by ``stride``."""
    return PhaseConvTranspose2d(
        in_channels, out_channels, kernel_size, stride=stride,
        output_padding=stride - 1, padding=kernel_size // 2,
    )


class PhaseConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that takes its phase form where that is faster (module docstring)."""

    #: the same function as PyTorch's layer (``plain_layer_type``)
    plain_equivalent = nn.ConvTranspose2d
    _phase_cache: Optional[tuple] = None

    def forward(self, input: Tensor, output_size=None) -> Tensor:
        if output_size is None and _takes_phase_path(self, input):
            return phase_conv_transpose(input, *self._phase_weights())
        return super().forward(input, output_size)

    def _phase_weights(self) -> tuple[Tensor, Tensor, int, tuple[int, int]]:
        key = parameters_key((self.weight, self.bias))
        if self._phase_cache is None or self._phase_cache[0] != key:
            self._phase_cache = (key, *phase_weights(self.weight.detach(), None if self.bias is None else
                                                     self.bias.detach(), self.stride[0], self.padding[0]))
        return self._phase_cache[1:]


def has_phase_form(m: nn.ConvTranspose2d) -> bool:
    """A square stride-s transposed convolution whose output is exactly s times its input
    (kernel + output_padding - 2·padding = stride, as ``deconv`` builds them): every output
    phase then has one output per input position."""
    (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
    oph, opw = m.output_padding
    return (kh == kw and sh == sw and ph == pw and oph == opw and m.groups == 1 and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and kh + oph - 2 * ph == sh)


def _takes_phase_path(m: nn.ConvTranspose2d, x: Tensor) -> bool:
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and m.out_channels < PHASE_OUT_CHANNELS_BELOW and has_phase_form(m))


def phase_weights(weight: Tensor, bias: Optional[Tensor], stride: int, padding: int
                  ) -> tuple[Tensor, Tensor, int, tuple[int, int]]:
    """The ordinary convolution equal to a transposed one (``weight`` [Cin, Cout, k, k]).

    Output ``o = s·n + q`` (phase q) sums the taps ``t ≡ q + p (mod s)`` of the inputs
    ``i = n + (q + p - t) / s``: for every phase a correlation over input offsets ``d = i - n``.
    One kernel covers the offsets of all phases (zeros where a phase has no tap); its output
    channel ``c·s² + qh·s + qw`` is phase (qh, qw) of channel c, pixel_shuffle's order.
    Returns (kernel [s²·Cout, Cin, K, K], bias [s²·Cout], s, (pad before, pad after))."""
    cin, cout, k, _ = weight.shape
    s, p = stride, padding
    taps = [(q, t, (q + p - t) // s) for q in range(s) for t in range(k) if (q + p - t) % s == 0]
    d_min, d_max = min(d for _, _, d in taps), max(d for _, _, d in taps)
    size = d_max - d_min + 1
    kernel = weight.new_zeros(cout, s, s, cin, size, size)
    w = weight.permute(1, 0, 2, 3)  # [Cout, Cin, k, k]
    for qh, th, dh in taps:
        for qw, tw, dw in taps:
            kernel[:, qh, qw, :, dh - d_min, dw - d_min] = w[:, :, th, tw]
    kernel = kernel.reshape(cout * s * s, cin, size, size).contiguous(memory_format=torch.channels_last)
    b = (bias if bias is not None else weight.new_zeros(cout)).repeat_interleave(s * s)
    return kernel, b, s, (-d_min, d_max)


def phase_conv_transpose(x: Tensor, kernel: Tensor, bias: Tensor, s: int, pads: tuple[int, int]) -> Tensor:
    """The transposed convolution of ``x`` (channels_last [B, Cin, H, W]) from its phase form
    (``phase_weights``): one convolution, then the phases interleaved into [B, Cout, s·H, s·W]
    by a single copy in channels_last order."""
    before, after = pads
    if before == after:  # the convolution pads (deconv's geometry): no padded copy of x
        y = F.conv2d(x, kernel, bias, padding=before)  # [B, s²·Cout, H, W]
    else:
        y = F.conv2d(F.pad(x, (before, after, before, after)), kernel, bias)
    b, c2, h, w = y.shape
    c = c2 // (s * s)
    rows = y.permute(0, 2, 3, 1).reshape(b, h, w, c, s, s)  # a view of channels_last memory
    out = rows.permute(0, 1, 4, 2, 5, 3).reshape(b, h * s, w * s, c)  # the one copy
    return out.permute(0, 3, 1, 2)
