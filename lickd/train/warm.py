"""Starting a run from another model's weights instead of from scratch.

* ``warm_start``: named modules (``init_parts``, e.g. "g_a,g_s,gain_units") copied from a model of
  another architecture with the same widths there; the rest starts fresh.
* ``widen``: a narrower model (N) of the same architecture grown to this run's N with its
  function kept (Net2Net's idea, Chen et al. 2016, in its simplest form): the old channels take
  the old weights, the new channels start from the wider model's own fresh initialisation, and
  every weight from a new channel into an old one is zero (convolutions, and GDN's coupling
  gamma), so at step 0 the old channels compute what they computed before and the new ones
  contribute nothing yet. Their incoming weights are not zero, so they carry signal,
  and the gradients of their outgoing weights are not zero: training grows them in. The one
  thing that is not kept is the rate of the new hyper-latent channels, which the entropy
  bottleneck's fresh densities price until they learn.

A teacher (N=128) widened from a trained student (N=64) starts at the student's rate-distortion
point instead of at a random one: the student's CPU-hours are not spent again (whether the wider
model then overtakes the student sooner than one trained from scratch is measured in
docs/training-log.md as the teacher run goes on).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import GDN
from ..layers.convolution import plain_layer_type
from ..models import CompressionModel


def warm_start(model: CompressionModel, source: CompressionModel, parts: list[str]) -> list[str]:
    """Copies the named modules' parameters (and their buffers of the same shape; CDF tables are
    rebuilt at export) from ``source`` into ``model``; returns the tensor names copied. A part
    missing from either model, or a parameter of another shape, is an error."""
    own, theirs = model.state_dict(), source.state_dict()
    params = {n for n, _ in model.named_parameters()}
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise ValueError("init_parts names no module")
    copied = []
    for part in parts:
        names = [n for n in own if n.startswith(part + ".")]
        if not names or not any(n.startswith(part + ".") for n in theirs):
            raise ValueError(f"init_parts: no module '{part}' in both models")
        for n in names:
            if n in theirs and theirs[n].shape == own[n].shape:
                copied.append(n)
            elif n in params:
                got = tuple(theirs[n].shape) if n in theirs else "missing"
                raise ValueError(f"init_parts: {n} is {got} in init, {tuple(own[n].shape)} here")
    with torch.no_grad():
        for n in copied:
            own[n].copy_(theirs[n])
    return copied


def _input_dim(module: nn.Module):
    """The weight dimension that indexes a convolution's input channels (None for other modules)."""
    kind = plain_layer_type(module)
    if issubclass(kind, nn.ConvTranspose2d):
        return 0  # [in, out, kh, kw]
    if issubclass(kind, nn.Conv2d):
        return 1  # [out, in, kh, kw]
    return None


def widen(model: CompressionModel, source: CompressionModel) -> list[str]:
    """Grows ``source`` into the wider (N; M the same), freshly initialised ``model`` of the same
    architecture (see the module doc); returns the names of the parameters that grew. Every
    parameter of ``source`` lands in the leading slice of ``model``'s; a parameter that is
    missing or would shrink, another architecture or M, or a grouped convolution is an error.
    Buffers of another shape (CDF tables, rebuilt at export) are left as they are."""
    if source.architecture != model.architecture:
        raise ValueError(f"widen: init is {source.architecture}, this run trains {model.architecture}")
    if source.M != model.M or source.N >= model.N:
        # M stays: a mean-scale h_s's output is [scales, means] by halves, and a wider M would
        # interleave the old halves into the wrong ones
        raise ValueError(f"widen: init N={source.N} M={source.M} must have M={model.M} and N below {model.N} "
                         "(a file of the same widths starts a run without init_widen)")
    theirs = source.state_dict()
    grown = []
    with torch.no_grad():
        for module_name, module in model.named_modules():
            tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            in_dim = _input_dim(module)
            if in_dim is not None and module.groups != 1:
                raise ValueError(f"widen: {module_name} is a grouped convolution")
            for name, own in tensors:
                full = f"{module_name}.{name}" if module_name else name
                if full not in theirs:
                    if isinstance(own, nn.Parameter):
                        raise ValueError(f"widen: init has no {full}")
                    continue  # a buffer built later (CDF tables at export)
                old = theirs[full]
                if old.dim() != own.dim() or any(o > n for o, n in zip(old.shape, own.shape)):
                    if isinstance(own, nn.Parameter):
                        raise ValueError(f"widen: {full} is {tuple(old.shape)} in init, {tuple(own.shape)} here")
                    continue  # a buffer of another layout (rebuilt at export)
                if old.shape == own.shape:
                    own.copy_(old)
                    continue
                # nothing flows from a new input channel into an old output channel
                if name == "weight" and in_dim is not None and own.size(in_dim) > old.size(in_dim):
                    out_dim = 1 - in_dim
                    cross = [slice(None)] * own.dim()
                    cross[out_dim], cross[in_dim] = slice(0, old.size(out_dim)), slice(old.size(in_dim), None)
                    own[tuple(cross)] = 0
                elif name == "gamma" and isinstance(module, GDN):  # [out, in], stored reparametrised
                    own[: old.size(0), old.size(1):] = module.gamma_reparam.init(torch.zeros(()))
                own[tuple(slice(0, s) for s in old.shape)] = old
                grown.append(full)
    return grown
