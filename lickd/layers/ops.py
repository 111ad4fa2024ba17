"""Parameter-bounding ops shared by GDN and the entropy models (CompressAI semantics and keys)."""
import torch
import torch.nn as nn
from torch import Tensor


class _LowerBoundFunction(torch.autograd.Function):
    """max(x, bound) whose gradient still passes where it pushes x up towards the bound."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through * grad_output, None


class LowerBound(nn.Module):
    """Lower bound with a straight-through gradient; the bound is the buffer ``bound``."""

    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return _LowerBoundFunction.apply(x, self.bound.to(x.dtype))


class NonNegativeParametrizer(nn.Module):
    """Stores a non-negative parameter p as sqrt(p + pedestal), bounded below (Ballé's GDN trick)."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        self.register_buffer("pedestal", torch.tensor([self.reparam_offset**2]))
        self.lower_bound = LowerBound((self.minimum + self.reparam_offset**2) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        """The stored value that represents the non-negative tensor ``x``."""
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal.to(x.dtype)
