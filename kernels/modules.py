"""``FusedSequential``: a drop-in ``nn.Sequential`` whose (transposed) conv + activation pairs run
as fused Triton kernels.

It keeps the original layers as its children under the same names, so ``state_dict`` keys (and
CompressAI compatibility) do not change, and it falls back to the plain layers wherever the
kernels do not apply: on CPUs (unless ``TRITON_INTERPRET=1``), for layer shapes the kernels do not
cover, or when asked to (``enabled=False``). With ``emulate=True`` it runs the kernels' rounding
model (``ops.reference(storage=dtype)``) in PyTorch instead, on any device.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from ..layers.convolution import plain_layer_type
from .ops import FusedConvActFunction, pack_conv_weight, pack_deconv_weight, pack_gdn, packed_width, reference


def _is_gdn(m: nn.Module) -> bool:
    # lickd's GDN and CompressAI's share these attributes (and state_dict keys).
    return all(hasattr(m, a) for a in ("beta", "gamma", "beta_reparam", "gamma_reparam", "inverse"))


def _activation(m: Optional[nn.Module]) -> Optional[str]:
    if m is None:
        return None
    if _is_gdn(m) and type(m).__name__ == "GDN":  # not GDN1 (|x|, no sqrt): left to PyTorch
        return "igdn" if m.inverse else "gdn"
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.LeakyReLU and m.negative_slope == 0.01:
        return "leaky_relu"
    return None


def _conv_spec(m: nn.Module) -> Optional[tuple]:
    """(transposed, stride, pad) when the kernels implement this layer, else None."""
    if plain_layer_type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros" \
            and m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1] and m.padding[0] == m.padding[1] \
            and m.bias is not None:
        return False, m.stride[0], m.padding[0]
    if plain_layer_type(m) is nn.ConvTranspose2d and m.kernel_size == (5, 5) and m.stride == (2, 2) and m.padding == (2, 2) \
            and m.output_padding == (1, 1) and m.groups == 1 and m.dilation == (1, 1) and m.bias is not None:
        return True, 2, 2
    return None


# One program holds [BLOCK_M, C_PAD] fp32 accumulators (C_PAD = C_LO + C_HI) and, for GDN, a
# [C_PAD, C_PAD] gamma tile. Up to these padded widths every layer compiles for sm_90 without
# spills and within shared memory (checked in CI by tests/test_kernels.py with kernels/resources.py);
# wider layers stay in PyTorch.
def max_fused_width(act: str, dtype: torch.dtype) -> int:
    if act in ("gdn", "igdn"):  # the gamma product: fp32 operands spill beyond 128
        return 128 if dtype == torch.float32 else 192
    return 512


def kernels_available(x: torch.Tensor) -> bool:
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` of conv/GDN/ReLU layers with fused execution of each conv + activation."""

    def __init__(self, *layers: nn.Module, dtype: torch.dtype = torch.bfloat16, enabled: bool = True,
                 split_k: bool = True, emulate: bool = False):
        super().__init__(*layers)
        self.dtype, self.enabled, self.split_k = dtype, enabled, split_k  # split_k: let small layers split
        # emulate: run the kernels' rounding model (ops.reference with storage=dtype) in PyTorch
        # instead of the kernels, on any device: predicts the fused path's accuracy without a GPU.
        self.emulate = emulate
        self._cache: dict = {}

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, dtype: torch.dtype = torch.bfloat16,
                        emulate: bool = False) -> "FusedSequential":
        return cls(*seq, dtype=dtype, emulate=emulate)

    def plan(self) -> list[tuple]:
        """Steps: ("fused", conv_index, act_module_or_None, act_name, spec) or ("layer", index)."""
        layers, steps, i = list(self), [], 0
        while i < len(layers):
            spec = _conv_spec(layers[i])
            if spec is None:
                steps.append(("layer", i))
                i += 1
                continue
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            act = _activation(nxt) or "none"
            width = packed_width(layers[i].out_channels)
            if width > max_fused_width(act, self.dtype):
                steps.append(("layer", i))
                i += 1
                continue
            steps.append(("fused", i, nxt if act != "none" else None, act, spec))
            i += 1 if act == "none" else 2
        return steps

    def _packed(self, i: int, conv: nn.Module, transposed: bool, act_module, act: str) -> dict:
        versions = (conv.weight._version, conv.weight.data_ptr(), str(conv.weight.device), self.dtype)
        if act_module is not None and act in ("gdn", "igdn"):
            versions += (act_module.beta._version, act_module.gamma._version, act_module.beta.data_ptr())
        hit = self._cache.get(i)
        if hit is not None and hit[0] == versions:
            return hit[1]
        packer = pack_deconv_weight if transposed else pack_conv_weight
        packed = {"w": packer(conv.weight, self.dtype)}
        if act in ("gdn", "igdn"):
            with torch.no_grad():
                beta, gamma = act_module.beta_reparam(act_module.beta), act_module.gamma_reparam(act_module.gamma)
            packed["gdn"] = pack_gdn(beta, gamma, self.dtype)
        self._cache[i] = (versions, packed)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and (self.emulate or kernels_available(x))):
            return super().forward(x)
        layers = list(self)
        out_dtype = x.dtype
        steps = self.plan()
        for n, step in enumerate(steps):
            if step[0] == "layer":
                x = layers[step[1]](x)
                continue
            _, i, act_module, act, (transposed, stride, pad) = step
            conv = layers[i]
            beta = gamma = None
            if act in ("gdn", "igdn"):
                beta, gamma = act_module.beta_reparam(act_module.beta), act_module.gamma_reparam(act_module.gamma)
            # Intermediate activations stay in the storage dtype; the transform's output is
            # written in the caller's dtype directly (one rounding less on y and x_hat).
            last = n == len(steps) - 1
            if self.emulate:
                y = reference(x.float(), conv.weight.float(), conv.bias.float(), transposed=transposed, stride=stride,
                              pad=pad, act=act, beta=beta, gamma=gamma, storage=self.dtype)
                x = y if last else y.to(self.dtype).float()
                continue
            packed = self._packed(i, conv, transposed, act_module, act)
            x = FusedConvActFunction.apply(x, conv.weight, conv.bias, beta, gamma, packed,
                                           (transposed, stride, pad, act, self.dtype, out_dtype if last else None,
                                            None if self.split_k else 1))
        return x.to(out_dtype)
