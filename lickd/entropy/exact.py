"""Device-independent entropy parameters: the hyper-synthesis evaluated exactly.

The decoder must rebuild the CDF index of every symbol of y exactly as the encoder chose it, from
``h_s(z_hat)``. In floating point that is not guaranteed across machines: a GPU (cuDNN, TF32,
another summation order) and a CPU differ in the last bits, and a scale that lands on the other
side of a scale-table boundary makes a file undecodable elsewhere (the lane checks catch it; the
file is still lost). CompressAI has this problem.

Here ``h_s`` (Conv2d / ConvTranspose2d / ReLU / LeakyReLU layers) runs on integer grids where
every sum is exact, so any summation order on any device gives the same bits. Two versions, the
one a file was coded with recorded in its header (``rans1b+x<version>``); new files use version 2.

**Version 2** (``EXACT_VERSION``): 8-bit weights, 11-bit activations, float32 GEMMs.

* each output channel's weights are rounded to a power-of-two step with |w| <= 127 steps; each
  layer's input is rounded, per image, to the power-of-two step that puts its largest value at
  <= 1023 steps (the scale is a function of the image's exact values, so it is the same
  everywhere);
* the reduction of every output is split, once per layer from the weights, into blocks whose
  sum of |w| times 1023 stays below 2^24: each block is one float32 GEMM whose every partial sum
  is an integer below 2^24, exact in float32 (and in TF32, whose significand holds these
  integers) whatever the order or blocking; blocks are added in float64, exactly;
* the integer sum times the two steps (powers of two: exact) plus the bias is rounded once to
  float64, then to float32; LeakyReLU is one float32 multiplication. Every step is an exactly
  rounded IEEE operation, so every device gets the same bits.

Measured against version 1 (2-vCPU AVX2 CPU, Kodak, N=64/M=192 mbt2018-mean): the rate of y
moves by -0.11 % to +0.10 % per image (four images at q1/q3/q8, a trained variable-rate
student); h_s takes 59-61 ms per image against 79-81 ms (float32 GEMMs instead of float64, but
im2col and the float64 block sums remain; a transposed convolution runs as one ordinary
convolution per output phase, without col2im), and a GPU needs no float64 for it. The image is
not tiled (the activation steps are per image, over a whole layer): each layer holds its float32
input, its integers and its output at once, and its GEMMs run over blocks of output rows, so the
scratch stays under ~V2_BLOCK_BYTES (24 MP decode: 1.48 GB peak RSS for the whole codec).
Where float32 GEMMs are not exact (a bf16 "fast" matmul mode), the same sums run as float64
GEMMs: ``float32_gemm_is_exact`` checks a worst case at every evaluation. The GEMMs are ~60 % of
its time and run near oneDNN's convolution speed; an im2col-free variant (one GEMM per kernel tap
on a shifted view of the padded input, blocks summed in int32: the same bits) measured no faster
on that CPU (46-75 ms against 46-72 ms per Kodak image, 2 threads, interleaved) and was dropped.

**On CPUs with AVX2** the same sums run in C++ (``lickd._intconv``, ``csrc/int_conv.cpp``,
through ``lickd.layers.int_conv``): int16 activations (channels last, zero-padded) times
int16-stored 8-bit weights with ``vpmaddwd``, summed in int32 (at most 127 * 1023 * 16,529 in
magnitude: exact in any order), without im2col or blocks, each transposed convolution's phases
written straight into its output, and the same float64 finish. The bits are those of the
float32-GEMM path (tested on both architectures' h_s, 24 transposed-convolution geometries and
the int32 limit); on the 2-vCPU AVX2 VM, h_s for a Kodak image takes 34-36 ms there against
53 ms, CompressAI's inexact float h_s 32-35 ms in the same run (docs/architecture.md). GPUs, and
CPUs without AVX2, keep the GEMMs.

**Version 1** (files coded before version 2; still decoded): float64 on a fixed point grid:

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

from ..layers import int_conv
from ..layers.convolution import parameters_key, plain_layer_type

ACT_BITS = 14
WEIGHT_BITS = 18
_MANTISSA_BITS = 53
#: the arithmetic new .lkd files are coded with (recorded in their coder id)
EXACT_VERSION = 2
#: every version this lickd decodes
EXACT_VERSIONS = (1, 2)


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
    if plain_layer_type(m) in (nn.Conv2d, nn.ConvTranspose2d):  # not MaskedConv2d
        return m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
    return False


def exact_sequential(seq: nn.Sequential, x: Tensor, version: int = EXACT_VERSION) -> Tensor:
    """``seq(x)`` in the exact arithmetic ``version`` (see the module doc): float64 for version
    1, float32 for version 2.

    Raises TypeError for layers other than Conv2d, ConvTranspose2d, ReLU and LeakyReLU, and
    ValueError for a version this lickd does not know.
    """
    for m in seq:
        if not _supported(m):
            raise TypeError(f"exact evaluation does not support {type(m).__name__}")
    if version == 2:
        return _exact_v2(seq, x)
    if version == 1:
        return _exact_v1(seq, x)
    raise ValueError(f"unknown exact arithmetic version {version} (this lickd knows {EXACT_VERSIONS})")


def _compiled(seq: nn.Sequential, device: torch.device, attr: str, layer_cls) -> dict:
    """``layer_cls`` of each conv layer of ``seq`` by index, built once per device and weights
    and cached in ``seq.__dict__[attr]`` (not a submodule: the state_dict is unchanged). The
    layers are stored before the key, so a thread that sees the key sees its layers."""
    cache = seq.__dict__.setdefault(attr, {})
    key = (device, parameters_key(seq.parameters()))
    if cache.get("key") != key:
        cache["layers"] = {i: layer_cls(m, device) for i, m in enumerate(seq)
                           if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
        cache["key"] = key
    return cache["layers"]


def _exact_v1(seq: nn.Sequential, x: Tensor) -> Tensor:
    layers = list(seq)
    compiled = _compiled(seq, x.device, "_lickd_exact_cache", _Layer)
    v = x.detach().to(torch.float64)
    for i, m in enumerate(layers):
        if i in compiled:  # every conv input goes onto the activation grid first
            v = compiled[i](_to_grid(v, ACT_BITS))
        else:  # exact (ReLU) or one correctly rounded multiplication (LeakyReLU)
            v = F.relu(v) if isinstance(m, nn.ReLU) else F.leaky_relu(v, m.negative_slope)
    return v


# ---------------------------------------------------------------------------- version 2
#: |w| per output channel, in its power-of-two step (8-bit integers)
V2_WEIGHT_MAX = 127
#: |a| per layer input and image, in its power-of-two step (11-bit integers)
V2_ACT_MAX = 1023
#: partial sums below this are integers float32 (and TF32) hold exactly
_F32_EXACT = 2**24
#: bytes of one GEMM block's unfolded input or output (output rows are processed in blocks)
V2_BLOCK_BYTES = 32 << 20


def _pow2_steps(maximum: Tensor, limit: int) -> Tensor:
    """Per element, the power of two s with maximum / s <= limit, the smallest but for rounding
    (1 where maximum is 0); float64, built from the exponent's bits (no pow or ldexp, whose
    device implementations need not be exact)."""
    mantissa, exponent = torch.frexp(maximum.double() / limit)  # = mantissa * 2^exponent
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent).long().clamp_(-1022, 1023)
    steps = ((exponent + 1023) << 52).view(torch.float64)
    return torch.where(maximum > 0, steps, torch.ones_like(steps))


def _blocks(matrix: Tensor) -> list[tuple[int, int]]:
    """Consecutive column ranges of the integer ``matrix`` [rows, K] within which every row's sum
    of |w| times V2_ACT_MAX stays below 2^24: the reduction blocks of one layer."""
    import numpy as np

    mags = matrix.abs().cpu().numpy()
    budget = (_F32_EXACT - 1) // V2_ACT_MAX
    blocks, start, acc = [], 0, np.zeros(mags.shape[0])
    for k in range(mags.shape[1]):
        if (acc + mags[:, k] > budget).any():
            blocks.append((start, k))
            start, acc = k, np.zeros(mags.shape[0])
        acc += mags[:, k]
    blocks.append((start, mags.shape[1]))
    return blocks


def _split(matrix: Tensor) -> list[tuple[int, int, Tensor]]:
    """The integer ``matrix`` [Cout, K] as its reduction blocks (k0, k1, float32 columns)."""
    return [(k0, k1, matrix[:, k0:k1].float().contiguous()) for k0, k1 in _blocks(matrix)]


def _gemm(blocks: list, cols: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """matrix @ cols ([B, K, L] float32 integers) in float64, exact: one GEMM per block and image
    in ``dtype`` (float32; float64 where float32 GEMMs are not exact here), added in float64."""
    acc = torch.empty(cols.size(0), blocks[0][2].size(0), cols.size(2), dtype=torch.float64, device=cols.device)
    for b in range(cols.size(0)):
        for j, (k0, k1, w) in enumerate(blocks):
            part = torch.mm(w.to(dtype), cols[b, k0:k1].to(dtype))
            if j == 0:
                acc[b].copy_(part)
            else:
                acc[b].add_(part)
    return acc


def float32_gemm_is_exact(device: torch.device) -> bool:
    """Whether float32 GEMMs here give exact sums of 8-bit x 11-bit integers below 2^24 (false
    where a reduced-precision mode rounds the inputs, e.g. bf16 via
    ``torch.backends.mkldnn.matmul.fp32_precision`` or oneDNN's default fpmath mode; TF32 holds
    these integers). A worst-case product, checked at every evaluation: it costs microseconds."""
    w = torch.full((64, 128), 127.0, device=device)
    w[:, 1::2] = 125.0
    a = torch.full((128, 64), 1021.0, device=device)
    a[::3] = 1023.0
    return torch.equal(torch.mm(w, a).double(), torch.mm(w.double(), a.double()))


class _LayerV2:
    """One conv layer's integer weights, their steps, its reduction blocks and its bias. A
    transposed convolution of stride s runs as s*s ordinary convolutions, one per output phase
    (the outputs o with (o + padding) mod s = q see only the taps q, q + s, ...): the same sums,
    without col2im."""

    def __init__(self, m: nn.Module, device: torch.device):
        w = m.weight.detach().to(device, torch.float64)
        if not bool(torch.isfinite(w).all()) or m.bias is not None and not bool(torch.isfinite(m.bias).all()):
            raise ValueError(f"{type(m).__name__} has non-finite weights: no exact evaluation")
        self.transposed = isinstance(m, nn.ConvTranspose2d)
        out_dim = 1 if self.transposed else 0
        other = tuple(d for d in range(4) if d != out_dim)
        self.w_steps = _pow2_steps(w.abs().amax(dim=other), V2_WEIGHT_MAX)  # [Cout]
        shape = [1, 1, 1, 1]
        shape[out_dim] = -1
        w_int = torch.clamp(torch.round(w / self.w_steps.view(shape)), -V2_WEIGHT_MAX, V2_WEIGHT_MAX)
        self.bias = m.bias.detach().to(device, torch.float64) if m.bias is not None else torch.zeros(
            m.out_channels, dtype=torch.float64, device=device)
        self.out_channels = m.out_channels
        self.stride, self.padding, self.kernel_size = m.stride, m.padding, m.kernel_size
        self.output_padding = getattr(m, "output_padding", (0, 0))
        #: the same sums in lickd._intconv's int32 kernels (CPUs where it runs; _use_native)
        self.int_layer = int_conv.IntLayer(m, self.transposed, w_int, self.w_steps, self.bias) \
            if device.type == "cpu" and int_conv.available() else None
        if not self.transposed:  # [Cout, Cin, kh, kw] -> [Cout, Cin*kh*kw], unfold's order
            self.blocks = _split(w_int.reshape(w_int.size(0), -1))
            return
        self.phases = [(qh, qw, sub.size(2), sub.size(3), _split(sub.reshape(sub.size(0), -1)))
                       for qh, qw, sub in int_conv.transposed_phases(w_int, self.stride)]

    def _finish(self, sums: Tensor, a_steps: Tensor) -> Tensor:
        """float32(sums * a_step * w_step + bias): the scaling exact (powers of two), the bias
        added with one float64 rounding, then one rounding to float32."""
        scale = a_steps.view(-1, 1, 1, 1) * self.w_steps.view(1, -1, 1, 1)
        return (sums * scale + self.bias.view(1, -1, 1, 1)).float()

    def __call__(self, a: Tensor, a_steps: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The layer's float32 output for ``a`` (float32 integers [B, Cin, H, W], their step per
        image ``a_steps``), over blocks of rows of at most V2_BLOCK_BYTES, the GEMMs in ``dtype``."""
        bsz, cin, h, w = a.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = int_conv.output_size((h, w), self)
        if not self.transposed:
            out = torch.empty(bsz, self.out_channels, oh, ow, dtype=torch.float32, device=a.device)
            self._conv(F.pad(a, (pw, pw, ph, ph)), self.blocks, (kh, kw), (sh, sw), (0, oh), (0, ow), a_steps,
                       out, (0, 0), (1, 1), dtype)
            return out
        out = torch.empty(bsz, self.out_channels, oh, ow, dtype=torch.float32, device=a.device)
        out.copy_(self._finish(torch.zeros(bsz, self.out_channels, 1, 1, dtype=torch.float64, device=a.device),
                               a_steps).expand_as(out))  # outputs no tap reaches (none for k >= s)
        for qh, qw, mh, mw, blocks in self.phases:
            # this phase's outputs: o = s * n + q - p for n in [n0, n1], from inputs n - m
            (n0h, n1h), (n0w, n1w) = int_conv.phase_range(qh, ph, sh, oh), int_conv.phase_range(qw, pw, sw, ow)
            if n1h < n0h or n1w < n0w:
                continue
            padded = F.pad(a, (mw - 1, max(0, n1w + 1 - w), mh - 1, max(0, n1h + 1 - h)))
            self._conv(padded, blocks, (mh, mw), (1, 1), (n0h, n1h + 1), (n0w, n1w + 1), a_steps, out,
                       (qh - ph, qw - pw), (sh, sw), dtype)
        return out

    def _conv(self, padded, blocks, kernel, stride, rows, cols_range, a_steps, out, origin, step, dtype):
        """Positions ``rows`` x ``cols_range`` of the correlation of ``padded`` with the blocks'
        kernel, finished into ``out`` at ``origin + step * position``: a block of rows at a time."""
        bsz, cin = padded.shape[:2]
        (kh, kw), (sh, sw) = kernel, stride
        c0, c1 = cols_range
        n_cols = c1 - c0
        per_row = max(1, 4 * cin * kh * kw * n_cols * bsz)
        chunk = max(1, V2_BLOCK_BYTES // per_row)
        for r0 in range(rows[0], rows[1], chunk):
            r1 = min(rows[1], r0 + chunk)
            band = padded[:, :, r0 * sh:(r1 - 1) * sh + kh, c0 * sw:(c1 - 1) * sw + kw]
            cols = F.unfold(band, (kh, kw), stride=(sh, sw))  # [B, Cin*kh*kw, rows*cols]
            sums = _gemm(blocks, cols, dtype).view(bsz, self.out_channels, r1 - r0, n_cols)
            o_h, o_w = origin[0] + step[0] * r0, origin[1] + step[1] * c0
            out[:, :, o_h:o_h + step[0] * (r1 - r0):step[0], o_w:o_w + step[1] * n_cols:step[1]] = \
                self._finish(sums, a_steps)


def _to_activation_grid(v: Tensor) -> tuple[Tensor, Tensor]:
    """(integers as float32, their step per image [B]) of a layer input ``v`` (float32), a few
    channels at a time (the division by a power of two and the rounding in float64: exact)."""
    v = torch.nan_to_num(v.float(), nan=0.0)
    steps = _pow2_steps(v.abs().amax(dim=(1, 2, 3)), V2_ACT_MAX)
    ints = torch.empty_like(v)
    per_channel = max(1, v[0, 0].numel() * v.size(0) * 8)
    chunk = max(1, V2_BLOCK_BYTES // per_channel)
    for c0 in range(0, v.size(1), chunk):
        part = v[:, c0:c0 + chunk].double().div_(steps.view(-1, 1, 1, 1))
        ints[:, c0:c0 + chunk] = part.round_().clamp_(-V2_ACT_MAX, V2_ACT_MAX)
    return ints, steps


#: the native path holds each layer's input, integers and output whole; past this many bytes of
#: output (~16 MP images for an N=64/M=192 mean-scale h_s) the GEMM path, which works over blocks
#: of rows, runs instead: a 24 MP decode peaked at 2.07 GB of RSS with the native path against
#: 1.91 GB with the GEMMs (2-vCPU AVX2 VM, one session). The bits are the same either way.
NATIVE_MAX_OUTPUT_BYTES = 96 << 20


def _use_native(compiled: dict, seq: nn.Sequential, x: Tensor) -> bool:
    """lickd._intconv runs version 2 on CPU tensors where it has a vector kernel for this CPU (its
    plain C++ fallback is slower than the float32 GEMMs), every layer's reductions fit its int32
    sums (they do for every h_s lickd builds) and the output is at most NATIVE_MAX_OUTPUT_BYTES."""
    if x.device.type != "cpu" or not int_conv.available() or not all(
            layer.int_layer is not None and layer.int_layer.reduction <= int_conv.native.MAX_REDUCTION
            for layer in compiled.values()):
        return False
    size, channels = x.size(0) * x.size(2) * x.size(3), x.size(1)
    for i in sorted(compiled):  # output positions grow by stride^2 per transposed layer
        layer = compiled[i]
        sh, sw = layer.stride
        size = size * sh * sw if layer.transposed else -(-size // (sh * sw))
        channels = layer.out_channels
    return 4 * size * channels <= NATIVE_MAX_OUTPUT_BYTES


def _exact_v2_native(seq: nn.Sequential, x: Tensor, compiled: dict) -> Tensor:
    """``_exact_v2`` through lickd._intconv: channels last between layers, the same bits."""
    threads = torch.get_num_threads()
    # a copy, channels last (changed in place below; x itself is never touched)
    v = x.detach().float().permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
    for i, m in enumerate(seq):
        if i in compiled:  # nan_to_num in place, then each image's max |v| (exact in any order)
            absmax = int_conv.sanitize_absmax(v, threads)
            v = compiled[i].int_layer(v, _pow2_steps(absmax, V2_ACT_MAX), threads)
        else:
            v = _activation_(m, v)
    return v.permute(0, 3, 1, 2).contiguous()


def _activation_(m: nn.Module, v: Tensor) -> Tensor:
    """ReLU, or LeakyReLU as one float32 multiplication of the negative values (by 1 for the
    others: exact; +0 stays +0 whatever the slope's sign), in place on ``v``: both paths' bits."""
    if isinstance(m, nn.ReLU):
        return F.relu_(v)
    slope = torch.tensor(m.negative_slope, dtype=torch.float32, device=v.device)
    return v.mul_(torch.where(v < 0, slope, torch.ones((), dtype=torch.float32, device=v.device)))


def v2_kernel(device: torch.device) -> str:
    """What computes version 2's sums on ``device`` here for images up to NATIVE_MAX_OUTPUT_BYTES
    of h_s output, such as Kodak's (for benchmark records; larger ones keep the GEMMs)."""
    if device.type == "cpu" and int_conv.available():
        return f"int32 sums (lickd._intconv, {int_conv.native.best_isa()})"
    return "float32 GEMMs" if float32_gemm_is_exact(device) else "float64 GEMMs"


def _exact_v2(seq: nn.Sequential, x: Tensor) -> Tensor:
    layers = list(seq)
    compiled = _compiled(seq, x.device, "_lickd_exact_cache_v2", _LayerV2)
    if _use_native(compiled, seq, x):
        return _exact_v2_native(seq, x, compiled)
    dtype = torch.float32 if float32_gemm_is_exact(x.device) else torch.float64
    v = x.detach().float().clone()  # changed in place below
    for i, m in enumerate(layers):
        if i in compiled:
            ints, steps = _to_activation_grid(v)
            del v  # only its integers are needed now
            v = compiled[i](ints, steps, dtype)
            del ints
        else:
            v = _activation_(m, v)
    return v


class ExactSequential(nn.Module):
    """A module whose forward is ``exact_sequential(seq, x, version)`` (so forward hooks, e.g.
    lickd bench's stage timer, see it). It holds ``seq`` without registering it: its owner's
    ``state_dict`` and parameters stay as they were."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.__dict__["seq"] = seq

    def forward(self, x: Tensor, version: int = EXACT_VERSION) -> Tensor:
        return exact_sequential(self.seq, x, version)
