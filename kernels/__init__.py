"""Triton kernels of lickd, shipped as ``lickd.kernels``.

The fused GDN/IGDN + (transposed) convolution kernels land here (see the kernel issue);
until then every model runs its PyTorch layers (``lickd.layers``), which are the reference
these kernels are tested against.
"""

__all__: list[str] = []
