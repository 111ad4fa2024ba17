"""Launchers and autograd functions for the fused (transposed) convolution + activation kernels.

Weights are packed once per (weights version, dtype, device) into the layouts the kernels read:
conv ``[K_PAD, C_PAD]`` (rows kh, kw, ci), transposed conv ``[4 phases, K_PAD, C_PAD]`` (rows
th, tw, ci), and GDN's ``gamma^T`` ``[C_PAD, C_PAD]`` with ``beta`` padded with ones (so padded
channels stay finite and are never stored). C_PAD = C_LO + C_HI, the output channel blocks
(``channel_blocks``).

The autograd functions run the fused kernel forward and compute the backward by recomputing
the PyTorch reference (conv + GDN) on the saved inputs: exact gradients of the same function,
which the tests check against float64.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from .autotune import Config, active_autotuner
from .conv_act import (ACT_GDN, ACT_IGDN, ACT_LEAKY, ACT_NONE, ACT_RELU, conv_act_kernel, deconv_act_kernel,
                       splitk_epilogue_kernel)

ACTIVATIONS = {"none": ACT_NONE, "gdn": ACT_GDN, "igdn": ACT_IGDN, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY}
BLOCK_K = 32


def _upcast(dtype: torch.dtype) -> bool:
    """Widen 16-bit dot operands to fp32 under the CPU interpreter (see conv_act._dot); the
    products are exact either way."""
    return dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") == "1"


def channel_blocks(c: int) -> tuple[int, int]:
    """(C_LO, C_HI): c output channels as one power-of-two block (C_HI = 0) or two, whichever pads
    less (192 -> 128 + 64, 320 -> 256 + 64, 40 -> 32 + 16; 128 -> 128; 112 -> 128). C_HI is at
    least C_LO / 4: a 256 + 32 split compiles to heavy spills on sm_90 (kernels/resources.py)."""
    whole = max(16, triton.next_power_of_2(c))
    lo = max(16, 1 << (c.bit_length() - 1))
    hi = max(16, lo // 4, triton.next_power_of_2(c - lo)) if c > lo else 0
    return (lo, hi) if hi and lo + hi < whole else (whole, 0)


def packed_width(c: int) -> int:
    """Packed row width: C_LO + C_HI."""
    return sum(channel_blocks(c))


def launch_config(cout: int, act: str, dtype: torch.dtype, transposed: bool) -> tuple[dict, int]:
    """(constexprs, num_warps) of a kernel for ``cout`` output channels: the one place the
    launchers and kernels/resources.py take them from.

    64 pixels per program with 8 warps wherever that compiles without spills for sm_90: Triton
    then emits Hopper's warpgroup MMA (HGMMA; with 32 pixels it falls back to HMMA), and
    docs/kernels.md's measurements found 64 best. 32 pixels for the layers that would spill at 64
    with Triton 3.6 or 3.8 (padded width above 320; transposed convolutions above 256, or from 128
    in fp32), with 8 warps from 128 padded channels except fp32 layers without GDN at 128 (Triton
    3.6 spills those with 8).
    CI checks every zoo layer (kernels/resources.py --check)."""
    lo, hi = channel_blocks(cout)
    c_pad = lo + hi
    wide = c_pad > 320 or (transposed and (c_pad > 256 or (dtype == torch.float32 and c_pad >= 128)))
    if not wide:
        pixels, warps = 64, 8
    else:
        pixels = 32
        warps = 8 if c_pad >= 256 or act in ("gdn", "igdn") or dtype != torch.float32 else 4
    constexprs = {"C_LO": lo, "C_HI": hi or 16, "HAS_HI": hi > 0, "ACT": ACTIVATIONS[act], "UPCAST": _upcast(dtype),
                  "BLOCK_M": pixels, "BLOCK_K": BLOCK_K}
    return constexprs, warps


def _k_pad(k: int) -> int:
    return triton.cdiv(k, BLOCK_K) * BLOCK_K


def pack_conv_weight(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """[Cout, Cin, KS, KS] -> [K_PAD, C_PAD], rows (kh, kw, ci)."""
    cout, cin, ks, _ = weight.shape
    rows = weight.detach().permute(2, 3, 1, 0).reshape(ks * ks * cin, cout)
    out = torch.zeros(_k_pad(rows.shape[0]), packed_width(cout), dtype=dtype, device=weight.device)
    out[: rows.shape[0], :cout] = rows
    return out


def pack_deconv_weight(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """[Cin, Cout, 5, 5] (ConvTranspose2d) -> [4, K_PAD, C_PAD]; phase (py, px), rows (th, tw, ci)
    holding W[ci, co, py + 2 th, px + 2 tw] for th < 3 - py, tw < 3 - px, zero otherwise."""
    cin, cout = weight.shape[:2]
    out = torch.zeros(4, _k_pad(9 * cin), packed_width(cout), dtype=dtype, device=weight.device)
    w = weight.detach()
    for py in range(2):
        for px in range(2):
            for th in range(3 - py):
                for tw in range(3 - px):
                    row = (th * 3 + tw) * cin
                    out[py * 2 + px, row:row + cin, :cout] = w[:, :, py + 2 * th, px + 2 * tw]
    return out


def gdn_dot_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of GDN's x^2 @ gamma^T for a storage dtype: bf16 for fp16 storage, whose x^2
    would overflow above |x| = 255.9."""
    return torch.bfloat16 if dtype == torch.float16 else dtype


def pack_gdn(beta: Tensor, gamma: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Effective (beta, gamma) -> (beta padded with ones as fp32, gamma^T padded with zeros)."""
    c = beta.numel()
    cp = packed_width(c)
    beta_p = torch.ones(cp, dtype=torch.float32, device=beta.device)
    beta_p[:c] = beta.detach().float()
    gamma_t = torch.zeros(cp, cp, dtype=gdn_dot_dtype(dtype), device=gamma.device)
    gamma_t[:c, :c] = gamma.detach().t()  # norm_i = sum_j x_j^2 gamma[i, j]
    return beta_p, gamma_t


def _dummy(device, dtype=torch.float32):
    return torch.zeros(16 * 16, dtype=dtype, device=device)


def k_splits(programs: int, k_total: int, device: torch.device, dtype: torch.dtype) -> int:
    """Split-K slices for a layer of ``programs`` output tiles: the small late layers fill less than
    one wave of the GPU (docs/kernels.md: 14-26 % of roofline), so their reduction is cut into slices
    until there are about two programs per SM, each slice at least 4 BLOCK_K steps long. 16-bit
    storage only (the latency path; fp32 slices of some layers would spill on sm_90)."""
    if device.type != "cuda" or dtype == torch.float32:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= sms:
        return 1
    return max(1, min(8, (2 * sms) // programs, k_total // (4 * BLOCK_K)))


def _launch(kernel, grid_m: int, phases: int, m_out: int, args: tuple, k_total: int, cout: int,
            out: Tensor, constexprs: dict, warps: int, splits: int, bias: Tensor, gdn, geometry: dict) -> list:
    """One pass when splits == 1; else the K slices into an fp32 workspace and the epilogue kernel.
    Returns the compiled kernels it launched (the autotuner reads their register spills)."""
    beta_p, gamma_t = gdn
    if splits <= 1:
        return [kernel[(grid_m, phases) if phases > 1 else (grid_m,)](
            *args[:5], out, _dummy(out.device), *args[5:], k_total, **geometry, **constexprs, SPLIT=False,
            num_warps=warps)]
    k_split = triton.cdiv(triton.cdiv(k_total, splits), BLOCK_K) * BLOCK_K
    splits = triton.cdiv(k_total, k_split)
    c_tot = constexprs["C_LO"] + (constexprs["C_HI"] if constexprs["HAS_HI"] else 0)
    ws = torch.empty(splits, m_out, c_tot, dtype=torch.float32, device=out.device)
    grid = (grid_m, phases, splits) if phases > 1 else (grid_m, splits)
    main = kernel[grid](*args[:5], out, ws, *args[5:], k_split, **geometry, **constexprs, SPLIT=True,
                        num_warps=warps)
    epilogue = splitk_epilogue_kernel[(triton.cdiv(m_out, constexprs["BLOCK_M"]),)](
        ws, bias, gamma_t, beta_p, out, m_out, cout, splits, C_LO=constexprs["C_LO"], C_HI=constexprs["C_HI"],
        HAS_HI=constexprs["HAS_HI"], ACT=constexprs["ACT"], UPCAST=constexprs["UPCAST"],
        BLOCK_M=constexprs["BLOCK_M"], num_warps=warps)
    return [main, epilogue]


def _configured_launch(kernel, shape_key: str, phases: int, m: int, args: tuple, k_total: int, cout: int,
                       out: Tensor, act: str, transposed: bool, splits: int | None, bias: Tensor, gdn,
                       geometry: dict) -> None:
    """Launches with ``launch_config`` and ``k_splits`` (``splits`` fixes the slices), or with the
    config the active autotuner measured for this shape (kernels/autotune.py)."""
    dtype = args[1].dtype  # the packed weights' storage dtype
    constexprs, warps = launch_config(cout, act, dtype, transposed)

    def grid_m(block_m: int) -> int:
        return triton.cdiv(m, block_m)

    def slices(block_m: int) -> int:
        return k_splits(phases * grid_m(block_m), k_total, out.device, dtype) if splits is None else splits

    def run(cfg: Config) -> list:
        return _launch(kernel, grid_m(cfg.block_m), phases, phases * m, args, k_total, cout, out,
                       {**constexprs, "BLOCK_M": cfg.block_m}, cfg.warps, cfg.splits, bias, gdn, geometry)

    default = Config(constexprs["BLOCK_M"], warps, slices(constexprs["BLOCK_M"]))
    tuner = active_autotuner()
    if tuner is None:
        run(default)
        return
    candidates = [default]
    for block_m in (64, 32):
        for w in (8, 4):
            candidates.append(Config(block_m, w, slices(block_m)))
            if splits is None:
                candidates.append(Config(block_m, w, 1))
    key = f"{shape_key} {act} {str(dtype).replace('torch.', '')} splits={'auto' if splits is None else splits}"
    run(tuner.choose(out.device, key, candidates, run))


def conv_act_nhwc(x: Tensor, w_packed: Tensor, bias: Tensor, cout: int, ks: int, stride: int, pad: int,
                  act: str, gdn: tuple[Tensor, Tensor] | None = None, out_dtype: torch.dtype | None = None,
                  splits: int | None = None) -> Tensor:
    """x: [B, H, W, Cin] contiguous -> [B, HO, WO, Cout]. ``splits``: split-K slices (None: k_splits)."""
    bsz, h, w, cin = x.shape
    ho, wo = (h + 2 * pad - ks) // stride + 1, (w + 2 * pad - ks) // stride + 1
    y = torch.empty(bsz, ho, wo, cout, dtype=out_dtype or x.dtype, device=x.device)
    m = bsz * ho * wo
    assert w_packed.shape[1] == packed_width(cout)
    gdn = gdn if gdn is not None else (_dummy(x.device), _dummy(x.device, w_packed.dtype))
    bias = bias.detach().float().contiguous()
    args = (x, w_packed, bias, gdn[1], gdn[0], h, w, ho, wo, m, cin, cout)
    _configured_launch(conv_act_kernel, f"conv{ks}/s{stride}/p{pad} {bsz}x{h}x{w}x{cin}->{cout}", 1, m, args,
                       ks * ks * cin, cout, y, act, False, splits, bias, gdn, {"KS": ks, "STRIDE": stride, "PAD": pad})
    return y


def deconv_act_nhwc(x: Tensor, w_packed: Tensor, bias: Tensor, cout: int, act: str,
                    gdn: tuple[Tensor, Tensor] | None = None, out_dtype: torch.dtype | None = None,
                    splits: int | None = None) -> Tensor:
    """x: [B, H, W, Cin] contiguous -> [B, 2H, 2W, Cout] (transposed conv 5x5/s2, p=2, op=1)."""
    bsz, h, w, cin = x.shape
    y = torch.empty(bsz, 2 * h, 2 * w, cout, dtype=out_dtype or x.dtype, device=x.device)
    m = bsz * h * w
    assert w_packed.shape[2] == packed_width(cout)
    gdn = gdn if gdn is not None else (_dummy(x.device), _dummy(x.device, w_packed.dtype))
    bias = bias.detach().float().contiguous()
    args = (x, w_packed, bias, gdn[1], gdn[0], h, w, m, cin, cout)
    _configured_launch(deconv_act_kernel, f"deconv5/s2 {bsz}x{h}x{w}x{cin}->{cout}", 4, m, args, 9 * cin, cout, y,
                       act, True, splits, bias, gdn, {})
    return y


# ---------------------------------------------------------------------------- reference
def reference(x: Tensor, weight: Tensor, bias: Tensor, *, transposed: bool, stride: int, pad: int, act: str,
              beta: Tensor | None = None, gamma: Tensor | None = None, storage: torch.dtype | None = None) -> Tensor:
    """The PyTorch definition the kernels implement (NCHW).

    ``storage``: also round where the kernels round for that storage dtype (x, the weights and
    GDN's x^2 and gamma to their dot operand dtypes, round to nearest even as GPUs do; products
    and sums stay in x's precision), so the result is the kernels' own up to summation order and
    the rounding of the stored output, which is the caller's. fp32 storage is modelled as exact
    fp32, not TF32. The accuracy of the fused path can be predicted with it on any device
    (``FusedSequential(emulate=True)``)."""
    def rounded(t: Tensor, dtype: torch.dtype | None) -> Tensor:
        return t if dtype is None else t.to(dtype).to(x.dtype)

    x, weight = rounded(x, storage), rounded(weight, storage)
    if transposed:
        y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=pad, output_padding=stride - 1)
    else:
        y = F.conv2d(x, weight, bias, stride=stride, padding=pad)
    if act in ("gdn", "igdn"):
        c = y.size(1)
        dot_dtype = None if storage is None else gdn_dot_dtype(storage)
        norm = F.conv2d(rounded(y * y, dot_dtype), rounded(gamma, dot_dtype).reshape(c, c, 1, 1), beta)
        return y * (torch.sqrt(norm) if act == "igdn" else torch.rsqrt(norm))
    if act == "relu":
        return F.relu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, 0.01)
    return y


class FusedConvActFunction(torch.autograd.Function):
    """Fused forward; backward by recomputing ``reference`` (exact gradients)."""

    @staticmethod
    def forward(ctx, x, weight, bias, beta, gamma, packed, spec):
        """spec: (transposed, stride, pad, act, compute dtype, output dtype or None = compute dtype,
        split-K slices or None = chosen by k_splits)."""
        transposed, stride, pad, act, dtype, out_dtype, splits = spec
        ctx.save_for_backward(x, weight, bias, beta, gamma)
        ctx.spec = spec
        x_nhwc = x.permute(0, 2, 3, 1).to(dtype).contiguous()
        gdn = packed["gdn"] if act in ("gdn", "igdn") else None
        cout = weight.shape[1] if transposed else weight.shape[0]
        if transposed:
            y = deconv_act_nhwc(x_nhwc, packed["w"], bias, cout, act, gdn, out_dtype=out_dtype or dtype,
                                splits=splits)
        else:
            y = conv_act_nhwc(x_nhwc, packed["w"], bias, cout, weight.shape[-1], stride, pad, act, gdn,
                              out_dtype=out_dtype or dtype, splits=splits)
        # Logical NCHW, physically NHWC (channels_last): no copy.
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, beta, gamma = ctx.saved_tensors
        transposed, stride, pad, act = ctx.spec[:4]
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                  for t in (x, weight, bias, beta, gamma)]
        with torch.enable_grad():
            y = reference(inputs[0], inputs[1], inputs[2], transposed=transposed, stride=stride, pad=pad, act=act,
                          beta=inputs[3], gamma=inputs[4])
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, grad_out, allow_unused=True)) if wanted else iter(())
        out = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return (*out, None, None)
