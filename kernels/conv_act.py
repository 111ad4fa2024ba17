"""Triton kernels: (transposed) convolution + bias + activation epilogue, NHWC.

The activation is applied in registers before the single store, so the output never makes a
round trip through memory:

* ``ACT_GDN`` / ``ACT_IGDN``: y = a * rsqrt(beta + a^2 @ gamma^T) (or sqrt): one program owns
  BLOCK_M pixels and *all* output channels, so the C x C gamma product is a second ``tl.dot``
  on the accumulator (x^2 formed in fp32, rounded to the dot dtype only as its operand);
* ``ACT_RELU`` / ``ACT_LEAKY`` (slope 0.01) for the hyper transforms; ``ACT_NONE``.

Convolutions are implicit GEMMs over a flattened (kh, kw, ci) reduction axis, so any input width
works (3 for the first layer, non-powers of two for students). Transposed 5x5/s2 convolutions
(padding 2, output padding 1) are split into the 4 output phases (sub-pixel decomposition): phase
(py, px) is a small convolution with (3 - py) x (3 - px) taps, and the phases are interleaved by
the store. Output widths are padded to a power of two >= 16 inside the kernel (masked stores).
Accumulation is fp32; operands are the storage dtype (bf16/fp16) or fp32 (TF32 on GPUs).
Runs under ``TRITON_INTERPRET=1`` on CPUs, which is how CI tests it.
"""
import triton
import triton.language as tl

ACT_NONE, ACT_GDN, ACT_IGDN, ACT_RELU, ACT_LEAKY = 0, 1, 2, 3, 4


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    # Triton's CPU interpreter multiplies bf16 operands wrongly: there (only) 16-bit operands are
    # widened to fp32 first, which gives the same products (16 x 16-bit products are exact in fp32).
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def _pixel_rows(M, HGRID, WGRID, BLOCK_M: tl.constexpr):
    """This program's BLOCK_M rows of a [B, HGRID, WGRID] pixel grid: (rows, mask, b, row, col)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    hw = HGRID * WGRID
    b = offs_m // hw
    r = offs_m - b * hw
    row = r // WGRID
    return offs_m, offs_m < M, b, row, r - row * WGRID


@triton.jit
def _epilogue(acc, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, out_row, mask_m, COUT,
              C_PAD: tl.constexpr, ACT: tl.constexpr, UPCAST: tl.constexpr):
    n = tl.arange(0, C_PAD)
    mask_n = n < COUT
    acc += tl.load(bias_ptr + n, mask=mask_n, other=0.0)[None, :]
    if ACT == 1 or ACT == 2:
        sq = (acc * acc).to(gamma_t_ptr.dtype.element_ty)
        gamma_t = tl.load(gamma_t_ptr + n[:, None] * C_PAD + n[None, :])
        norm = _dot(sq, gamma_t, tl.zeros((sq.shape[0], C_PAD), dtype=tl.float32), UPCAST)
        norm += tl.load(beta_ptr + n)[None, :]
        if ACT == 1:
            acc = acc * tl.rsqrt(norm)
        else:
            acc = acc * tl.sqrt(norm)
    if ACT == 3:
        acc = tl.maximum(acc, 0.0)
    if ACT == 4:
        acc = tl.where(acc >= 0, acc, acc * 0.01)
    tl.store(y_ptr + out_row[:, None] + n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def conv_act_kernel(x_ptr, w_ptr, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr,
                    H, W, HO, WO, M, CIN, COUT,
                    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                    C_PAD: tl.constexpr, ACT: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[b, oh, ow, :] = act(sum_{kh, kw, ci} x[b, s*oh - p + kh, s*ow - p + kw, ci] w[(kh, kw, ci), :] + bias).

    w is packed [K_PAD, C_PAD] with rows in (kh, kw, ci) order, zero past KS*KS*CIN and COUT.
    """
    offs_m, mask_m, b, oh, ow = _pixel_rows(M, HO, WO, BLOCK_M)
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    offs_k = tl.arange(0, BLOCK_K)
    n = tl.arange(0, C_PAD)
    kt = KS * KS * CIN
    acc = tl.zeros((BLOCK_M, C_PAD), dtype=tl.float32)
    for k0 in range(0, kt, BLOCK_K):
        k = k0 + offs_k
        tap = k // CIN
        ci = k - tap * CIN
        kh = tap // KS
        kw = tap - kh * KS
        ih = ih0[:, None] + kh[None, :]
        iw = iw0[:, None] + kw[None, :]
        valid = mask_m[:, None] & (k < kt)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + ((b[:, None] * H + ih) * W + iw) * CIN + ci[None, :], mask=valid, other=0.0)
        wt = tl.load(w_ptr + k[:, None] * C_PAD + n[None, :])
        acc = _dot(a.to(wt.dtype), wt, acc, UPCAST)
    _epilogue(acc, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, offs_m * COUT, mask_m, COUT, C_PAD, ACT, UPCAST)


@triton.jit
def deconv_act_kernel(x_ptr, w_ptr, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr,
                      H, W, M, CIN, COUT,
                      C_PAD: tl.constexpr, ACT: tl.constexpr, UPCAST: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Transposed conv 5x5, stride 2, padding 2, output padding 1, one output phase per grid column.

    Phase (py, px) writes y[b, 2*mh + py, 2*mw + px, :]; its tap (th, tw) (th < 3 - py, tw < 3 - px)
    reads x[b, mh + 1 - th, mw + 1 - tw, :] with weight W[ci, co, py + 2*th, px + 2*tw]. w is packed
    [4, 9 * CIN (padded to BLOCK_K), C_PAD] with rows (th, tw, ci), zero for taps a phase lacks.
    """
    phase = tl.program_id(1)
    py = phase // 2
    px = phase - py * 2
    offs_m, mask_m, b, mh, mw = _pixel_rows(M, H, W, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n = tl.arange(0, C_PAD)
    kt = 9 * CIN
    k_rows = tl.cdiv(kt, BLOCK_K) * BLOCK_K
    acc = tl.zeros((BLOCK_M, C_PAD), dtype=tl.float32)
    for k0 in range(0, kt, BLOCK_K):
        k = k0 + offs_k
        tap = k // CIN
        ci = k - tap * CIN
        th = tap // 3
        tw = tap - th * 3
        ih = mh[:, None] + 1 - th[None, :]
        iw = mw[:, None] + 1 - tw[None, :]
        valid = (mask_m[:, None] & (k < kt)[None, :] & (th < 3 - py)[None, :] & (tw < 3 - px)[None, :]
                 & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        a = tl.load(x_ptr + ((b[:, None] * H + ih) * W + iw) * CIN + ci[None, :], mask=valid, other=0.0)
        wt = tl.load(w_ptr + (phase * k_rows + k)[:, None] * C_PAD + n[None, :])
        acc = _dot(a.to(wt.dtype), wt, acc, UPCAST)
    out_row = ((b * (2 * H) + 2 * mh + py) * (2 * W) + 2 * mw + px) * COUT
    _epilogue(acc, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, out_row, mask_m, COUT, C_PAD, ACT, UPCAST)
