"""Variable-rate models: one network codes at every quality through learned gain units.

A gain unit (Cui et al., "Asymmetric Gained Deep Image Compression", 2021) scales each channel
of the latent by a learned gain before quantisation and by a learned inverse gain after it:

    y = g_a(x) * gain[q]           coded with the hyperprior's Gaussian (h_a sees the gained y)
    x_hat = g_s(y_hat * inverse[q])

A larger gain means a finer quantisation step, so more bits and less distortion. The gains of
quality q = 1..8 are trained with CompressAI's lambdas for those qualities (a random quality per
training crop); a quality between two levels uses the log-linear interpolation of their gains
(``quality`` 3.5 is the geometric mean of the gains of 3 and 4), and its lambda the same
interpolation of theirs. Everything else is shared across qualities: the transforms, the
hyperprior and the CDF tables, so a file needs no per-quality tables and the exact
entropy-parameter path (lickd.entropy.exact, on z_hat) is unchanged.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn as nn
from torch import Tensor

from .base import register_architecture
from .google import MeanScaleHyperprior, ScaleHyperprior

#: CompressAI's MSE lambdas for qualities 1..8 (loss = lambda * 255^2 * MSE + bpp).
MSE_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
#: the trained qualities 1..QUALITY_LEVELS of a variable-rate model (a gain vector each)
QUALITY_LEVELS = len(MSE_LAMBDAS)
QUALITY_MIN, QUALITY_MAX = 1.0, float(QUALITY_LEVELS)
#: what a variable-rate model codes at when no quality is asked for (and its weights name none)
DEFAULT_QUALITY = 3

QualityLike = Union[int, float, Tensor]


def check_quality(quality: float) -> float:
    """``quality`` as the float32 value a file records (encoder and decoder derive the same gains
    from it); raises ValueError outside [1, 8]."""
    q = float(torch.tensor(float(quality), dtype=torch.float32))
    if not (QUALITY_MIN <= q <= QUALITY_MAX) or math.isnan(q):
        raise ValueError(f"quality must be in {QUALITY_MIN:g}..{QUALITY_MAX:g}, got {quality}")
    return q


def _positions(quality: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the level at or below each quality and the fraction towards the next one."""
    q = quality.clamp(QUALITY_MIN, QUALITY_MAX) - QUALITY_MIN
    low = q.floor().clamp(max=len(MSE_LAMBDAS) - 2)
    return low.long(), (q - low).unsqueeze(-1)


def quality_lambda(quality: QualityLike) -> Tensor:
    """The training lambda of a (possibly fractional) quality: CompressAI's at integers, their
    log-linear interpolation in between."""
    q = torch.as_tensor(quality).to(torch.float64)
    log_l = torch.log(torch.tensor(MSE_LAMBDAS, dtype=torch.float64, device=q.device))
    low, t = _positions(q.reshape(-1))
    out = torch.exp(log_l[low] * (1 - t[:, 0]) + log_l[low + 1] * t[:, 0])
    return out.reshape(q.shape)


class GainUnits(nn.Module):
    """Per-quality channel gains (and inverse gains) of a latent, stored as logs."""

    def __init__(self, channels: int, levels: int = len(MSE_LAMBDAS)):
        super().__init__()
        # Start from the gain that keeps the MSE-optimal step ~ 1/sqrt(lambda) across levels,
        # 1 at the geometric middle of the lambda range.
        lam = torch.tensor(MSE_LAMBDAS[:levels], dtype=torch.float32)
        init = 0.5 * torch.log(lam / math.sqrt(MSE_LAMBDAS[0] * MSE_LAMBDAS[levels - 1]))
        self.log_gain = nn.Parameter(init[:, None].repeat(1, channels))
        self.log_inverse = nn.Parameter(-init[:, None].repeat(1, channels))

    def _interpolate(self, table: Tensor, quality: QualityLike, batch: int) -> Tensor:
        q = torch.as_tensor(quality, dtype=torch.float32, device=table.device)
        q = q.expand(batch) if q.dim() == 0 else q.reshape(-1)
        if q.numel() != batch:
            raise ValueError(f"{q.numel()} qualities for a batch of {batch}")
        low, t = _positions(q)
        log = table[low] * (1 - t) + table[low + 1] * t
        return torch.exp(log)[:, :, None, None]

    def gain(self, quality: QualityLike, batch: int) -> Tensor:
        return self._interpolate(self.log_gain, quality, batch)

    def inverse(self, quality: QualityLike, batch: int) -> Tensor:
        return self._interpolate(self.log_inverse, quality, batch)


class VariableRate:
    """Mixin: gain units around the quantisation of y. ``quality`` is a number or one per image."""

    variable_rate = True

    def __init__(self, N: int, M: int):
        super().__init__(N, M)
        self.gain_units = GainUnits(self.M)

    @staticmethod
    def _need(quality):
        if quality is None:
            raise ValueError("a variable-rate model needs a quality (1..8)")
        return quality

    def analysis(self, x: Tensor, quality=None) -> Tensor:
        y = self.g_a(x)
        return y * self.gain_units.gain(self._need(quality), y.size(0)).to(y.dtype)

    def synthesis(self, y_hat: Tensor, quality=None) -> Tensor:
        scale = self.gain_units.inverse(self._need(quality), y_hat.size(0)).to(y_hat.dtype)
        return self.g_s(y_hat * scale)


@register_architecture("bmshj2018-hyperprior-vr")
class VariableRateScaleHyperprior(VariableRate, ScaleHyperprior):
    """bmshj2018-hyperprior with gain units: every quality 1..8 (and in between) in one model."""


@register_architecture("mbt2018-mean-vr")
class VariableRateMeanScaleHyperprior(VariableRate, MeanScaleHyperprior):
    """mbt2018-mean with gain units: every quality 1..8 (and in between) in one model."""
