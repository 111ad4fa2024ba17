"""What the CPU can run natively: the instruction-set features that decide precision and kernels.

Read from /proc/cpuinfo on Linux (PyTorch's own dispatch level beside it), so a choice such as
bf16 autocast in training is made from the machine at hand rather than from advice in a README:
on a CPU with AVX-512 BF16 or AMX, bf16 autocast halved a training step here; on one with AVX2
only it made the step 6-24x slower.
"""
from __future__ import annotations

import functools
import platform

#: flags that matter to lickd's choices, as /proc/cpuinfo spells them
FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Every feature flag the kernel reports for this CPU (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> list[str]:
    """The subset of FEATURES this CPU has, plus PyTorch's CPU dispatch level."""
    out = [f for f in FEATURES if f in cpu_flags()]
    try:
        import torch

        out.append(f"torch:{torch.backends.cpu.get_cpu_capability()}")
    except (ImportError, AttributeError):
        pass
    return out


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX-512 BF16 or AMX-BF16)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags or platform.machine() == "arm64" and "bf16" in flags


def resolve_amp(setting, device_type: str) -> bool:
    """bf16 autocast on or off for a training setting ``true``/``false``/``"auto"``: auto means on
    for CUDA and for CPUs with native bf16, off for the rest."""
    if setting != "auto":
        return bool(setting)
    return device_type == "cuda" or (device_type == "cpu" and native_bf16())


__all__ = ["FEATURES", "cpu_features", "cpu_flags", "native_bf16", "resolve_amp"]
