"""Generalized Divisive Normalization (Ballé et al. 2016), state_dict-compatible with CompressAI.

    GDN:  y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)
    IGDN: y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)

``GDN.forward`` is the PyTorch reference. In inference on the CPU with a channels_last input
(what StudentCodec runs) it takes ``gdn_channels_last``: the same arithmetic as a matrix
product per block of pixels, in place, so each block's temporaries stay in cache and one output
tensor is allocated instead of four. ``lickd.kernels`` fuses GDN with the adjacent convolution
on GPUs.
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
        if _takes_fast_path(x):
            return gdn_channels_last(x, beta, gamma, self.inverse)
        c = x.size(1)
        norm = F.conv2d(x * x, gamma.reshape(c, c, 1, 1), beta)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))

    def extra_repr(self) -> str:
        return f"{self.beta.numel()}, inverse={self.inverse}"


#: pixels per block of ``gdn_channels_last``: 4096 x 64 channels x 4 bytes = 1 MB, which stays in
#: a core's L2 through the four passes (measured on the 2-vCPU AVX2 machine at 256x384x64: 10.4 ms
#: against 16.5 ms for the reference; blocks of 1k-16k pixels are within 15 %)
GDN_BLOCK = 4096


def _takes_fast_path(x: Tensor) -> bool:
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


def gdn_channels_last(x: Tensor, beta: Tensor, gamma: Tensor, inverse: bool, block: int = GDN_BLOCK) -> Tensor:
    """GDN (IGDN with ``inverse``) of a channels_last [B, C, H, W] tensor, without autograd: the
    pixels as rows of a [B*H*W, C] matrix, ``norm = beta + (x*x) @ gamma^T`` per block of rows,
    then ``x * rsqrt(norm)`` (``x * sqrt(norm)``) in place. Returns a channels_last tensor."""
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: channels_last is [B, H, W, C] in memory
    out = torch.empty_like(rows)
    gamma_t = gamma.t().contiguous()
    for start in range(0, rows.size(0), block):
        xb, ob = rows[start:start + block], out[start:start + block]
        torch.addmm(beta, xb * xb, gamma_t, out=ob)
        (ob.sqrt_() if inverse else ob.rsqrt_()).mul_(xb)
    return out.view(b, h, w, c).permute(0, 3, 1, 2)
