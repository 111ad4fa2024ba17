"""Image quality metrics on 8-bit RGB images, as CompressAI's eval_model computes them."""
from __future__ import annotations

import math

import numpy as np
import torch


def _as_float(img: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float64 [1, 3, H, W] in [0, 1]."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError("metrics take uint8 H x W x 3 images")
    return torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None] / 255.0


def psnr_rgb(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR (dB) over all RGB samples of two 8-bit images; inf when identical."""
    if ref.shape != test.shape:
        raise ValueError(f"image sizes differ: {ref.shape} vs {test.shape}")
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim_rgb(ref: np.ndarray, test: np.ndarray) -> float:
    """MS-SSIM (5 scales, 11x11 Gaussian window, sigma 1.5) of two 8-bit images, as
    pytorch-msssim computes it (what CompressAI reports). NaN for images whose smaller side is
    not above 160 pixels, where the five scales do not fit."""
    from pytorch_msssim import ms_ssim

    if ref.shape != test.shape:
        raise ValueError(f"image sizes differ: {ref.shape} vs {test.shape}")
    if min(ref.shape[:2]) <= 160:
        return math.nan
    return float(ms_ssim(_as_float(ref).float(), _as_float(test).float(), data_range=1.0))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM expressed in dB, -10 log10(1 - value), as CompressAI's plots do."""
    return math.inf if value >= 1 else -10 * math.log10(1 - value)
