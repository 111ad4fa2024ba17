"""What the CPU can run natively: the instruction-set features that decide precision and kernels.

Read from /proc/cpuinfo on Linux (PyTorch's own dispatch level beside it), so a choice such as
bf16 autocast in training is made from the machine at hand rather than from advice in a README:
on a CPU with AVX-512 BF16 or AMX, bf16 autocast halved a training step here; on one with AVX2
only it made the step 6-24x slower.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
from typing import Optional

#: flags that matter to lickd's choices, as /proc/cpuinfo spells them
FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Every feature flag the kernel reports for this CPU (empty where /proc/cpuinfo is absent)."""
    for record in _cpuinfo_records():
        for key in ("flags", "Features"):
            if key in record:
                return frozenset(record[key].split())
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


def _cpuinfo_records() -> list[dict]:
    """/proc/cpuinfo as one dict per logical CPU (empty where it is absent)."""
    records, current = [], {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if current:
                        records.append(current)
                    current = {}
                elif ":" in line:
                    key, value = line.split(":", 1)
                    current[key.strip()] = value.strip()
    except OSError:
        return []
    return records + ([current] if current else [])


def cpu_mhz() -> Optional[float]:
    """The highest "cpu MHz" /proc/cpuinfo reports (None where it reports none). On a VM this is
    the host's nominal clock; on bare metal with frequency scaling, the clock of the moment."""
    try:
        clocks = [float(r["cpu MHz"]) for r in _cpuinfo_records() if "cpu MHz" in r]
    except ValueError:
        return None
    return max(clocks) if clocks else None


def physical_cores() -> Optional[int]:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo: cores, not SMT threads."""
    cores = {(r.get("physical id"), r["core id"]) for r in _cpuinfo_records() if "core id" in r}
    return len(cores) or None


def fp32_peak_gmacs(threads: int) -> Optional[dict]:
    """The nominal fp32 peak of ``threads`` threads in GMAC/s: the cores they can occupy (SMT
    siblings share a core's FMA units) x clock (``cpu_mhz``) x SIMD lanes (16 with AVX-512F, 8
    with AVX2 + FMA, else 4) x 2 FMA units per core. A yardstick for "what fraction of the machine
    does the codec use", not a measurement: some cores have one AVX-512 FMA unit, or run AVX-512
    as two 256-bit halves, and a boost clock is higher. None where no clock is reported."""
    mhz = cpu_mhz()
    if mhz is None:
        return None
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    cores = min(threads, physical_cores() or threads)
    ghz = mhz / 1e3
    return {"gmacs": cores * ghz * lanes * 2, "threads": threads, "cores": cores, "ghz": round(ghz, 3),
            "lanes": lanes, "fma_units": 2}


#: glibc keeps freed blocks up to this size in its heap instead of returning them to the kernel
#: (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD; docs/architecture.md, "CPU fast path")
RETAIN_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: (mallopt option, value): both values are C ints
MALLOPT_SETTINGS = ((_M_MMAP_THRESHOLD, RETAIN_BYTES), (_M_TRIM_THRESHOLD, RETAIN_BYTES))


_retained: bool | None = None  # None: not asked yet


def retain_freed_memory() -> bool:
    """Asks glibc's malloc to serve large blocks from its heap and to keep what is freed, so the
    activations of one layer reuse the pages of the previous one. By default every block above
    128 KB is a fresh mmap whose pages the kernel faults in and zeroes on first touch, and a
    transform allocates several tensors of tens of MB per layer: measured on the 2-vCPU AVX2
    machine (Kodak 768x512, N=64), g_a took ~150 ms with the default and ~90 ms with this; the
    peak memory is unchanged (the same blocks are live at the peak), but up to RETAIN_BYTES of
    freed memory stays with the process instead of going back to the system. Process-wide:
    StudentCodec (on a CPU) and the trainer apply it once; a no-op off glibc or with
    ``LICKD_MALLOC=system``. Returns whether it applied."""
    global _retained
    if _retained is None:
        _retained = _apply_retention()
    return _retained


def retention_applied() -> bool:
    """Whether ``retain_freed_memory`` has applied in this process (it is not applied here)."""
    return bool(_retained)


def _apply_retention() -> bool:
    if os.environ.get("LICKD_MALLOC", "").lower() == "system" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False  # musl and others: their allocators have no such knobs
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return all(libc.mallopt(option, value) == 1 for option, value in MALLOPT_SETTINGS)
    except (OSError, AttributeError):
        return False


__all__ = ["FEATURES", "MALLOPT_SETTINGS", "RETAIN_BYTES", "cpu_features", "cpu_flags", "native_bf16",
           "resolve_amp", "retain_freed_memory", "retention_applied"]
