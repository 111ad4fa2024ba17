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
the store. Triton tiles are powers of two, so the output channels are held as one block of C_LO
(a power of two >= 16) or, where that saves padding, two blocks C_LO + C_HI (192 = 128 + 64,
320 = 256 + 64, 96 = 64 + 32), with masked stores past COUT.
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
def _to_storage(v, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 -> the storage dtype, rounding to nearest even as GPUs do (cvt.rn). Triton's CPU
    interpreter truncates fp32 -> bf16 instead (a biased error twice as large, which made
    interpreter-measured accuracy look worse than the GPU's): there (only) the rounding is done on
    the bits first, so the conversion that follows is exact."""
    if UPCAST and dtype == tl.bfloat16 and v.dtype == tl.float32:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


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
def _activate(acc, norm, ACT: tl.constexpr):
    if ACT == 1:
        acc = acc * tl.rsqrt(norm)
    if ACT == 2:
        acc = acc * tl.sqrt(norm)
    if ACT == 3:
        acc = tl.maximum(acc, 0.0)
    if ACT == 4:
        acc = tl.where(acc >= 0, acc, acc * 0.01)
    return acc


@triton.jit
def _epilogue(acc_lo, acc_hi, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, out_row, mask_m, COUT,
              C_LO: tl.constexpr, C_HI: tl.constexpr, HAS_HI: tl.constexpr, ACT: tl.constexpr,
              UPCAST: tl.constexpr):
    """Bias + activation on the channel blocks [0, C_LO) and (HAS_HI) [C_LO, C_LO + C_HI), then
    one masked store each. GDN's norm couples the blocks: norm_lo = sq_lo @ G_ll + sq_hi @ G_hl and
    norm_hi = sq_lo @ G_lh + sq_hi @ G_hh, over gamma^T packed [C_TOT, C_TOT]."""
    C_TOT: tl.constexpr = C_LO + C_HI if HAS_HI else C_LO
    n_lo = tl.arange(0, C_LO)
    n_hi = C_LO + tl.arange(0, C_HI)
    acc_lo += tl.load(bias_ptr + n_lo, mask=n_lo < COUT, other=0.0)[None, :]
    if HAS_HI:
        acc_hi += tl.load(bias_ptr + n_hi, mask=n_hi < COUT, other=0.0)[None, :]
    norm_lo = acc_lo
    norm_hi = acc_hi
    if ACT == 1 or ACT == 2:
        sq_lo = _to_storage(acc_lo * acc_lo, gamma_t_ptr.dtype.element_ty, UPCAST)
        norm_lo = tl.load(beta_ptr + n_lo)[None, :] + tl.zeros((sq_lo.shape[0], C_LO), dtype=tl.float32)
        norm_lo = _dot(sq_lo, tl.load(gamma_t_ptr + n_lo[:, None] * C_TOT + n_lo[None, :]), norm_lo, UPCAST)
        if HAS_HI:
            sq_hi = _to_storage(acc_hi * acc_hi, gamma_t_ptr.dtype.element_ty, UPCAST)
            norm_lo = _dot(sq_hi, tl.load(gamma_t_ptr + n_hi[:, None] * C_TOT + n_lo[None, :]), norm_lo, UPCAST)
            norm_hi = tl.load(beta_ptr + n_hi)[None, :] + tl.zeros((sq_hi.shape[0], C_HI), dtype=tl.float32)
            norm_hi = _dot(sq_lo, tl.load(gamma_t_ptr + n_lo[:, None] * C_TOT + n_hi[None, :]), norm_hi, UPCAST)
            norm_hi = _dot(sq_hi, tl.load(gamma_t_ptr + n_hi[:, None] * C_TOT + n_hi[None, :]), norm_hi, UPCAST)
    acc_lo = _activate(acc_lo, norm_lo, ACT)
    tl.store(y_ptr + out_row[:, None] + n_lo[None, :], _to_storage(acc_lo, y_ptr.dtype.element_ty, UPCAST),
             mask=mask_m[:, None] & (n_lo < COUT)[None, :])
    if HAS_HI:
        acc_hi = _activate(acc_hi, norm_hi, ACT)
        tl.store(y_ptr + out_row[:, None] + n_hi[None, :], _to_storage(acc_hi, y_ptr.dtype.element_ty, UPCAST),
                 mask=mask_m[:, None] & (n_hi < COUT)[None, :])


@triton.jit
def _accumulate(a, w_ptr, k, acc_lo, acc_hi, C_LO: tl.constexpr, C_HI: tl.constexpr, HAS_HI: tl.constexpr,
                UPCAST: tl.constexpr):
    """acc += a @ w[k, :] for both channel blocks (w rows of C_TOT values)."""
    C_TOT: tl.constexpr = C_LO + C_HI if HAS_HI else C_LO
    wt = tl.load(w_ptr + k[:, None] * C_TOT + tl.arange(0, C_LO)[None, :])
    a = _to_storage(a, wt.dtype, UPCAST)
    acc_lo = _dot(a, wt, acc_lo, UPCAST)
    if HAS_HI:
        wt_hi = tl.load(w_ptr + k[:, None] * C_TOT + C_LO + tl.arange(0, C_HI)[None, :])
        acc_hi = _dot(a, wt_hi, acc_hi, UPCAST)
    return acc_lo, acc_hi


@triton.jit
def _store_partial(acc_lo, acc_hi, ws_ptr, split, M_OUT, out_pix, mask_m,
                   C_LO: tl.constexpr, C_HI: tl.constexpr, HAS_HI: tl.constexpr):
    """Split-K: this slice's raw sums into the fp32 workspace [splits, M_OUT, C_TOT]."""
    C_TOT: tl.constexpr = C_LO + C_HI if HAS_HI else C_LO
    row = (split * M_OUT + out_pix) * C_TOT
    tl.store(ws_ptr + row[:, None] + tl.arange(0, C_LO)[None, :], acc_lo, mask=mask_m[:, None])
    if HAS_HI:
        tl.store(ws_ptr + row[:, None] + C_LO + tl.arange(0, C_HI)[None, :], acc_hi, mask=mask_m[:, None])


@triton.jit
def splitk_epilogue_kernel(ws_ptr, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, M_OUT, COUT, SPLITS,
                           C_LO: tl.constexpr, C_HI: tl.constexpr, HAS_HI: tl.constexpr, ACT: tl.constexpr,
                           UPCAST: tl.constexpr, BLOCK_M: tl.constexpr):
    """Split-K, second pass: the slices summed in a fixed order (deterministic), then bias and the
    activation, as the single-pass kernels do."""
    C_TOT: tl.constexpr = C_LO + C_HI if HAS_HI else C_LO
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M_OUT
    acc_lo = tl.zeros((BLOCK_M, C_LO), dtype=tl.float32)
    acc_hi = tl.zeros((BLOCK_M, C_HI), dtype=tl.float32)
    for s in range(0, SPLITS):
        row = (s * M_OUT + offs_m) * C_TOT
        acc_lo += tl.load(ws_ptr + row[:, None] + tl.arange(0, C_LO)[None, :], mask=mask_m[:, None], other=0.0)
        if HAS_HI:
            acc_hi += tl.load(ws_ptr + row[:, None] + C_LO + tl.arange(0, C_HI)[None, :], mask=mask_m[:, None],
                              other=0.0)
    _epilogue(acc_lo, acc_hi, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, offs_m * COUT, mask_m, COUT,
              C_LO, C_HI, HAS_HI, ACT, UPCAST)


@triton.jit
def conv_act_kernel(x_ptr, w_ptr, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, ws_ptr,
                    H, W, HO, WO, M, CIN, COUT, K_SPLIT,
                    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                    C_LO: tl.constexpr, C_HI: tl.constexpr, HAS_HI: tl.constexpr, ACT: tl.constexpr,
                    UPCAST: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[b, oh, ow, :] = act(sum_{kh, kw, ci} x[b, s*oh - p + kh, s*ow - p + kw, ci] w[(kh, kw, ci), :] + bias).

    w is packed [K_PAD, C_TOT] with rows in (kh, kw, ci) order, zero past KS*KS*CIN and COUT.
    SPLIT: grid column j sums reduction rows [j * K_SPLIT, (j + 1) * K_SPLIT) into the workspace and
    splitk_epilogue_kernel finishes (for layers too small to fill the GPU).
    """
    offs_m, mask_m, b, oh, ow = _pixel_rows(M, HO, WO, BLOCK_M)
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    offs_k = tl.arange(0, BLOCK_K)
    kt = KS * KS * CIN
    k_first = tl.program_id(1) * K_SPLIT
    acc_lo = tl.zeros((BLOCK_M, C_LO), dtype=tl.float32)
    acc_hi = tl.zeros((BLOCK_M, C_HI), dtype=tl.float32)
    for k0 in range(k_first, tl.minimum(kt, k_first + K_SPLIT), BLOCK_K):
        k = k0 + offs_k
        tap = k // CIN
        ci = k - tap * CIN
        kh = tap // KS
        kw = tap - kh * KS
        ih = ih0[:, None] + kh[None, :]
        iw = iw0[:, None] + kw[None, :]
        valid = mask_m[:, None] & (k < kt)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + ((b[:, None] * H + ih) * W + iw) * CIN + ci[None, :], mask=valid, other=0.0)
        acc_lo, acc_hi = _accumulate(a, w_ptr, k, acc_lo, acc_hi, C_LO, C_HI, HAS_HI, UPCAST)
    if SPLIT:
        _store_partial(acc_lo, acc_hi, ws_ptr, tl.program_id(1), M, offs_m, mask_m, C_LO, C_HI, HAS_HI)
    else:
        _epilogue(acc_lo, acc_hi, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, offs_m * COUT, mask_m, COUT,
                  C_LO, C_HI, HAS_HI, ACT, UPCAST)


@triton.jit
def deconv_act_kernel(x_ptr, w_ptr, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, ws_ptr,
                      H, W, M, CIN, COUT, K_SPLIT,
                      C_LO: tl.constexpr, C_HI: tl.constexpr, HAS_HI: tl.constexpr, ACT: tl.constexpr,
                      UPCAST: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Transposed conv 5x5, stride 2, padding 2, output padding 1, one output phase per grid column.

    Phase (py, px) writes y[b, 2*mh + py, 2*mw + px, :]; its tap (th, tw) (th < 3 - py, tw < 3 - px)
    reads x[b, mh + 1 - th, mw + 1 - tw, :] with weight W[ci, co, py + 2*th, px + 2*tw]. w is packed
    [4, 9 * CIN (padded to BLOCK_K), C_TOT] with rows (th, tw, ci), zero for taps a phase lacks.
    SPLIT: as in conv_act_kernel, with the slice in grid dimension 2.
    """
    phase = tl.program_id(1)
    py = phase // 2
    px = phase - py * 2
    offs_m, mask_m, b, mh, mw = _pixel_rows(M, H, W, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    kt = 9 * CIN
    k_rows = tl.cdiv(kt, BLOCK_K) * BLOCK_K
    k_first = tl.program_id(2) * K_SPLIT
    acc_lo = tl.zeros((BLOCK_M, C_LO), dtype=tl.float32)
    acc_hi = tl.zeros((BLOCK_M, C_HI), dtype=tl.float32)
    for k0 in range(k_first, tl.minimum(kt, k_first + K_SPLIT), BLOCK_K):
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
        acc_lo, acc_hi = _accumulate(a, w_ptr, phase * k_rows + k, acc_lo, acc_hi, C_LO, C_HI, HAS_HI, UPCAST)
    out_pix = (b * (2 * H) + 2 * mh + py) * (2 * W) + 2 * mw + px
    if SPLIT:
        _store_partial(acc_lo, acc_hi, ws_ptr, tl.program_id(2), 4 * M, out_pix, mask_m, C_LO, C_HI, HAS_HI)
    else:
        _epilogue(acc_lo, acc_hi, bias_ptr, gamma_t_ptr, beta_ptr, y_ptr, out_pix * COUT, mask_m, COUT,
                  C_LO, C_HI, HAS_HI, ACT, UPCAST)
