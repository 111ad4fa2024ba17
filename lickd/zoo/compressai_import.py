"""Import of CompressAI checkpoints (``.pth.tar`` zoo files or training checkpoints).

The checkpoint is read with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler
that only rebuilds tensors and plain containers (no code runs), then written as a lickd
safetensors file: the only place where lickd reads a pickle, on the user's explicit request.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import torch

from ..errors import CorruptFileError
from ..models import build_model
from . import ModelInfo, save_weights

_LEGACY_EB = re.compile(r"^(.*entropy_bottleneck)\._(matrix|bias|factor)(\d+)$")
_LEGACY_NAMES = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


def _unwrap(checkpoint) -> dict:
    """The state_dict inside a zoo file or a training checkpoint."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "network", "model_state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CorruptFileError("no state_dict of tensors found in the checkpoint")
    out = {}
    for key, value in checkpoint.items():
        key = key[len("module."):] if key.startswith("module.") else key
        m = _LEGACY_EB.match(key)
        if m:
            key = f"{m.group(1)}.{_LEGACY_NAMES[m.group(2)]}.{m.group(3)}"
        out[key] = value
    return out


def guess_architecture(state_dict: dict) -> str:
    if "h_a.0.weight" not in state_dict:
        return "bmshj2018-factorized"
    M = state_dict["g_a.6.weight"].size(0)
    return "mbt2018-mean" if state_dict["h_s.4.weight"].size(0) == 2 * M else "bmshj2018-hyperprior"


def convert_checkpoint(src: os.PathLike, dst: os.PathLike, *, name: str, architecture: Optional[str] = None,
                       quality: Optional[int] = None, lmbda: Optional[float] = None, metric: str = "mse",
                       half: bool = False) -> ModelInfo:
    """Writes the CompressAI checkpoint ``src`` as the lickd weights file ``dst``."""
    try:
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
        raise CorruptFileError(f"{src}: not a loadable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    state = _unwrap(checkpoint)
    try:
        architecture = architecture or guess_architecture(state)
        N, M = state["g_a.0.weight"].size(0), state["g_a.6.weight"].size(0)
        model = build_model(architecture, N, M)
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as e:
        raise CorruptFileError(f"{src}: not a {architecture or 'known'} checkpoint ({e})") from None
    model.update(force=False)  # training checkpoints carry no tables: build them once, here
    info = ModelInfo(name=name, architecture=architecture, N=N, M=M, quality=quality, lmbda=lmbda, metric=metric,
                     description=f"converted from CompressAI checkpoint {os.path.basename(str(src))}")
    return save_weights(model.eval(), dst, info, half=half)
