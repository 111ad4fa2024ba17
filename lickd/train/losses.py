"""Training objectives with named terms.

Rate-distortion (CompressAI's convention, so lambdas mean the same):
    mse:     lambda * 255^2 * MSE(x_hat, x) + bpp
    ms-ssim: lambda * (1 - MS-SSIM(x_hat, x)) + bpp

Distillation (Allemand et al. 2025, with the seed code's flaws fixed):
    w_rd * RD + w_y * MSE(P_y(y_s), y_t) + w_z * MSE(P_z(z_s), z_t) + w_x * D(x_hat_s, x_hat_t)
The latent terms compare the *continuous* latents (the seed code matched a noisy student y_hat to
a rounded teacher y_hat, a mismatch with a non-zero floor), the reconstruction term is on the
distortion term's scale, D being the RD loss's own distortion (the seed code's was ~1e4 times
smaller and inert), and the teacher's
x_hat is computed with the same quantisation noise as the student's, so a student that equals
its teacher has exactly zero KD loss. P_y and P_z are 1x1 projections, used only when widths
differ, trained with the student and dropped at export.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def bpp(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    return sum(torch.log(v).sum() for v in likelihoods.values()) / (-math.log(2) * num_pixels)


class RateDistortionLoss(nn.Module):
    """``lmbda`` is the model's lambda; a variable-rate model's batches pass one per image
    (``forward(..., lmbda=tensor[B])``): the loss is then the batch mean of each image's own
    lambda * D + R (the rate term's mean is the batch bpp either way)."""

    def __init__(self, lmbda: float, metric: str = "mse"):
        super().__init__()
        self.lmbda, self.metric = float(lmbda), metric

    def distortion(self, x_hat: Tensor, target: Tensor, terms: Optional[dict] = None,
                   lmbda: Optional[Tensor] = None) -> Tensor:
        """lambda * 255^2 * MSE, or lambda * (1 - MS-SSIM): the distortion term of the RD loss
        (the MS-SSIM value itself goes into ``terms`` when given)."""
        if lmbda is None:
            lmbda_mean, per_image = self.lmbda, None
        else:
            per_image = lmbda.to(x_hat.device, torch.float32)
        if self.metric == "mse":
            if per_image is None:
                return lmbda_mean * 255**2 * F.mse_loss(x_hat, target)
            return 255**2 * (per_image * (x_hat - target).square().mean(dim=(1, 2, 3))).mean()
        from pytorch_msssim import ms_ssim

        value = ms_ssim(x_hat, target, data_range=1.0, size_average=per_image is None)
        if terms is not None:
            terms["ms-ssim"] = value.mean()
        if per_image is None:
            return lmbda_mean * (1 - value)
        return (per_image * (1 - value)).mean()

    def forward(self, output: dict, target: Tensor, lmbda: Optional[Tensor] = None) -> dict[str, Tensor]:
        n, _, h, w = target.shape
        terms = {"bpp": bpp(output["likelihoods"], n * h * w)}
        x_hat = output["x_hat"].float()
        terms["mse"] = F.mse_loss(x_hat, target)
        terms["distortion"] = self.distortion(x_hat, target, terms, lmbda)
        terms["rd"] = terms["distortion"] + terms["bpp"]
        terms["psnr"] = -10 * torch.log10(terms["mse"].detach().clamp_min(1e-10))
        terms["loss"] = terms["rd"]
        return terms


class Projection(nn.Module):
    """1x1 convolutions mapping student latents to the teacher's widths (identity when equal)."""

    def __init__(self, student_widths: dict[str, int], teacher_widths: dict[str, int]):
        super().__init__()
        self.maps = nn.ModuleDict({name: nn.Conv2d(student_widths[name], teacher_widths[name], 1)
                                   for name in teacher_widths
                                   if name in student_widths and student_widths[name] != teacher_widths[name]})

    def forward(self, name: str, latent: Tensor) -> Tensor:
        return self.maps[name](latent) if name in self.maps else latent


class DistillationLoss(nn.Module):
    def __init__(self, lmbda: float, metric: str, weights: dict[str, float], projection: Optional[Projection] = None):
        super().__init__()
        self.rd = RateDistortionLoss(lmbda, metric)
        self.weights = {k: float(v) for k, v in weights.items() if v}
        self.projection = projection if projection is not None else Projection({}, {})

    def forward(self, output: dict, target: Tensor, teacher: dict, lmbda: Optional[Tensor] = None) -> dict[str, Tensor]:
        terms = self.rd(output, target, lmbda)
        loss = self.weights.get("rd", 0.0) * terms["rd"]
        for name in ("y", "z"):
            if name in self.weights:
                student = self.projection(name, output["latents"][name].float())
                terms[f"kd_{name}"] = F.mse_loss(student, teacher["latents"][name].float())
                loss = loss + self.weights[name] * terms[f"kd_{name}"]
        if "x" in self.weights:
            terms["kd_x"] = self.rd.distortion(output["x_hat"].float(), teacher["x_hat"].float(), lmbda=lmbda)
            loss = loss + self.weights["x"] * terms["kd_x"]
        terms["loss"] = loss
        return terms
