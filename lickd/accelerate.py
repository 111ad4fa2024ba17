"""``lickd.accelerate(model)``: run a model's transforms with the fused Triton kernels.

Works in place on lickd's and CompressAI's Ballé-family models: ``g_a`` and ``g_s`` (and, with
``hyper=True``, ``h_a`` and ``h_s``) become ``lickd.kernels.FusedSequential`` holding the same
layers, so parameters, ``state_dict`` keys and training all stay as they were. The hyper
transforms are left alone by default: the entropy parameters they produce must be bit-identical
between encoder and decoder, which fused bf16 kernels only guarantee on the same GPU and config.
"""
from __future__ import annotations

import torch
from torch import nn

TRANSFORMS = ("g_a", "g_s")
HYPER = ("h_a", "h_s")


def accelerate(model: nn.Module, dtype: torch.dtype = torch.bfloat16, hyper: bool = False,
               emulate: bool = False) -> nn.Module:
    """``emulate``: the kernels' rounding model in PyTorch instead of the kernels (any device; for
    predicting the fused path's accuracy, see ``FusedSequential``)."""
    from .kernels import FusedSequential

    for name in TRANSFORMS + (HYPER if hyper else ()):
        seq = getattr(model, name, None)
        if isinstance(seq, nn.Sequential) and not isinstance(seq, FusedSequential):
            setattr(model, name, FusedSequential.from_sequential(seq, dtype=dtype, emulate=emulate))
        elif isinstance(seq, FusedSequential):
            seq.dtype, seq.emulate = dtype, emulate
    return model
