"""Devices: what ``device="auto"`` means, and waiting for a device's queued work."""
from __future__ import annotations

from typing import Union

import torch

from .errors import LickdError

__all__ = ["resolve_device", "synchronize"]


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``None`` or ``"auto"``: the GPU when there is one, else the CPU. A CUDA request on a
    machine without CUDA is a LickdError, not a silent fallback."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LickdError("CUDA was requested but no CUDA device is available")
    return device


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (no-op on CPUs), so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
