"""Efficiency of a lickd codec: parameters, MACs per pixel, latency per stage, memory, energy.

Stage latencies come from forward hooks on the transforms (device-synchronised), so they add up
to the measured end-to-end ``compress``/``decompress`` time; what is not inside a transform is
reported as "entropy coding" (quantisation, CDF indexes, rANS, container). Energy per image on
NVIDIA GPUs is read from NVML's cumulative energy counter, minus the idle power measured just
before over the same duration.
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import threading
import time
from collections import defaultdict
from typing import Optional

import numpy as np
import torch

from ..device import synchronize

STAGES = ("g_a", "h_a", "h_s", "g_s")


def parameter_counts(model) -> dict:
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in STAGES
              if hasattr(model, name)}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def macs_per_pixel(model, height: int, width: int) -> dict:
    """Multiply-accumulates per input pixel of each transform (torch's FlopCounterMode / 2): the
    architecture's, whatever layout the model runs in (counted with autograd on, where
    PhaseConvTranspose2d runs as the transposed convolution it equals: its phase form computes
    ~1.4x the MACs, kernel zeros included, in less time)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.float()
    x = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    out = {}
    with torch.enable_grad():
        y = model.g_a(x)
        shapes = {"g_a": x, "g_s": torch.zeros_like(y)}
        if hasattr(model, "h_a"):
            z = model._hyper_analysis(y)
            shapes.update(h_a=torch.zeros_like(y), h_s=torch.zeros_like(z))
        for name, inp in shapes.items():
            counter = FlopCounterMode(display=False)
            with counter:
                getattr(model, name)(inp)
            out[name] = counter.get_total_flops() / 2 / (height * width)
    out["encode"] = sum(out.get(k, 0) for k in ("g_a", "h_a", "h_s"))
    out["decode"] = sum(out.get(k, 0) for k in ("h_s", "g_s"))
    return out


@contextlib.contextmanager
def stage_timer(model, sync):
    """Accumulates the wall time of each transform's forward into the yielded dict; h_s is the
    exact one where the model has it (what .lkd coding runs)."""
    times, starts, handles = defaultdict(float), {}, []
    stages = [(name, getattr(model, name, None)) for name in STAGES]
    if hasattr(model, "exact_h_s"):
        stages.append(("h_s", model.exact_h_s))
    for name, module in stages:
        if module is None:
            continue

        def pre(_m, _i, name=name):
            sync()
            starts[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):
            sync()
            times[name] += time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


class NvmlDevice:
    """NVML counters of one GPU: energy, power, utilisation (``handle`` None when unavailable,
    with the ``reason``)."""

    def __init__(self, device: torch.device):
        self.handle, self.reason = None, ""
        if device.type != "cuda":
            self.reason = "not an NVIDIA GPU"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as e:  # no pynvml, no counter on this GPU, no permission...
            self.handle, self.reason = None, f"NVML energy counter unavailable ({type(e).__name__}: {e})"

    def joules(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def idle_watts(self, seconds: float = 1.0) -> float:
        samples, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            samples.append(self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0)
            time.sleep(0.01)
        return statistics.mean(samples)

    def busy_percent(self) -> int:
        """NVML's utilisation: % of the last sample period in which a kernel was running."""
        return int(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)


class BusySampler:
    """Mean GPU utilisation (NVML) over a ``with`` block, sampled every ``period`` s in a thread;
    ``mean`` stays None without NVML."""

    def __init__(self, device: torch.device, period: float = 0.05):
        self.nvml, self.period, self.samples = NvmlDevice(device), period, []
        self.mean: Optional[float] = None

    def _run(self):
        while not self._stop.wait(self.period):
            self.samples.append(self.nvml.busy_percent())

    def __enter__(self):
        if self.nvml.handle is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.nvml.handle is not None:
            self._stop.set()
            self._thread.join()
            self.mean = statistics.mean(self.samples) if self.samples else None


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss)"


def fast_path(codec) -> dict:
    """What a codec's transforms run with: memory format, glibc allocator retention (CPU), threads,
    and the kernel of the exact entropy parameters."""
    from ..cpu import retention_applied
    from ..entropy.exact import v2_kernel

    w = codec.model.g_a[0].weight
    layout = "channels_last" if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() \
        else "contiguous"
    retained = retention_applied() if codec.device.type == "cpu" else None
    threads = torch.get_num_threads()
    exact = v2_kernel(codec.device)
    return {"layout": layout, "malloc_retention": retained, "threads": threads, "exact_h_s": exact,
            "summary": f"{layout}, {threads} threads" + (", glibc malloc retention" if retained else "")
            + f", exact h_s: {exact}"}


def benchmark(codec, image: np.ndarray, repeats: int = 10, warmup: int = 2) -> dict:
    """Median per-stage latency of compress and decompress of ``image`` with ``codec``."""
    device, model = codec.device, codec.model

    def sync():
        synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data = codec.compress(image)
    for _ in range(warmup):
        codec.decompress(codec.compress(image))
    rows = {"encode": defaultdict(list), "decode": defaultdict(list)}
    energy = NvmlDevice(device)
    idle = energy.idle_watts() if energy.handle else None
    e0 = energy.joules() if energy.handle else None
    t_all = time.perf_counter()
    for _ in range(repeats):
        for direction, fn in (("encode", lambda: codec.compress(image)), ("decode", lambda: codec.decompress(data))):
            with stage_timer(model, sync) as stages:
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                total = time.perf_counter() - t0
            for name, t in stages.items():
                rows[direction][name].append(t)
            rows[direction]["entropy coding"].append(total - sum(stages.values()))
            rows[direction]["total"].append(total)
    elapsed = time.perf_counter() - t_all
    h, w = image.shape[:2]
    out = {"image": f"{w}x{h}", "bytes": len(data), "bpp": 8 * len(data) / (h * w), "repeats": repeats,
           "latency_ms": {d: {k: 1e3 * statistics.median(v) for k, v in r.items()} for d, r in rows.items()}}
    for d in ("encode", "decode"):
        ms = out["latency_ms"][d]["total"]
        out[f"{d}_images_per_s"] = 1e3 / ms
        out[f"{d}_mpixel_per_s"] = h * w / 1e3 / ms
    out["peak_memory_mb"], out["peak_memory_kind"] = _peak_memory_mb(device)
    out["fast_path"] = fast_path(codec)
    if energy.handle:
        used = energy.joules() - e0
        out["energy_j_per_image"] = (used - idle * elapsed) / repeats  # one encode + one decode each
        out["idle_power_w"] = idle
    else:
        out["energy_j_per_image"], out["energy_note"] = None, energy.reason
    return out
