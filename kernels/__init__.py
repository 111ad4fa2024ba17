"""Triton kernels of lickd, shipped as ``lickd.kernels``.

Fused (transposed) convolution + bias + GDN/IGDN/ReLU/LeakyReLU epilogues (``conv_act``), their
launchers and autograd functions (``ops``), per-shape launch configs measured and cached on
GPUs (``autotune``, opt-in), and ``FusedSequential`` (``modules``), which
``lickd.accelerate`` swaps into a model's transforms without changing its ``state_dict``.
Importing this package needs Triton; the models themselves never do.
"""
from .modules import FusedSequential, kernels_available
from .ops import FusedConvActFunction, reference

__all__ = ["FusedConvActFunction", "FusedSequential", "kernels_available", "reference"]
