"""Evaluation: actual-bytes RD curves (lickd and classical codecs), BD-rate, plots, efficiency."""
from .bdrate import bd_psnr, bd_rate
from .metrics import ms_ssim_db, ms_ssim_rgb, psnr_rgb

__all__ = ["bd_psnr", "bd_rate", "ms_ssim_db", "ms_ssim_rgb", "psnr_rgb"]
