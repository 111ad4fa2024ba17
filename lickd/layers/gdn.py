"""Generalized Divisive Normalization (Ballé et al. 2016), state_dict-compatible with CompressAI.

    GDN:  y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)
    IGDN: y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)

This is the PyTorch reference path; ``lickd.kernels`` fuses it with the adjacent convolution.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .ops import NonNegativeParametrizer


class GDN(nn.Module):
    def __init__(self, in_channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = bool(inverse)
        self.beta_reparam = NonNegativeParametrizer(minimum=float(beta_min))
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(in_channels)))
        self.gamma_reparam = NonNegativeParametrizer()
        self.gamma = nn.Parameter(self.gamma_reparam.init(float(gamma_init) * torch.eye(in_channels)))

    def effective_params(self) -> tuple[Tensor, Tensor]:
        """(beta [C], gamma [C, C]) after reparametrisation: what the normalisation really uses."""
        return self.beta_reparam(self.beta), self.gamma_reparam(self.gamma)

    def forward(self, x: Tensor) -> Tensor:
        beta, gamma = self.effective_params()
        c = x.size(1)
        norm = F.conv2d(x * x, gamma.reshape(c, c, 1, 1), beta)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))

    def extra_repr(self) -> str:
        return f"{self.beta.numel()}, inverse={self.inverse}"
