"""Launch configurations measured per layer shape and GPU, cached on disk (opt-in).

``launch_config`` (ops.py) is a fixed rule: 64 pixels x 8 warps where that compiles without
spills, else 32, and split-K for layers under one wave. The autotuner replaces the rule by a
measurement: for each layer shape it times a few candidates (pixels per program, warps, split-K
slices) on the real inputs the first time the shape runs, keeps the fastest one that compiled
without register spills, and writes it to a JSON cache keyed by GPU name and Triton version, so
later processes launch the tuned config at once.

Opt-in, because tuning compiles several variants the first time a shape is seen (seconds per
layer): ``LICKD_AUTOTUNE=1`` in the environment or ``enable_autotune()``. The cache file is
``$LICKD_AUTOTUNE_CACHE`` or ``~/.cache/lickd/autotune.json``; a damaged cache is ignored with a
warning and rewritten.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import triton

from ..fileio import atomic_write

CACHE_VERSION = 1


@dataclass(frozen=True)
class Config:
    """One way to launch a layer: pixels per program, warps, split-K slices."""

    block_m: int
    warps: int
    splits: int


def default_cache_path() -> Path:
    env = os.environ.get("LICKD_AUTOTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lickd" / "autotune.json"


def device_key(device: torch.device) -> str:
    """The GPU (or the interpreter) and the Triton version the measurements belong to."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (interpreter)"
    return f"{name} | triton {triton.__version__}"


def cuda_timer(run: Callable[[], None], cfg: Config, repeats: int = 10) -> float:
    """Median milliseconds of ``run`` (launching ``cfg``) on the current CUDA stream, after one
    warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class Autotuner:
    """Picks and remembers the fastest spill-free ``Config`` per (device, layer shape) key."""

    def __init__(self, path: Optional[os.PathLike] = None,
                 timer: Optional[Callable[[Callable[[], None], Config], float]] = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.timer = timer or cuda_timer
        self._entries: dict[str, dict[str, dict]] = self._read()

    def _read(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("version") != CACHE_VERSION or not isinstance(doc.get("devices"), dict):
                raise ValueError(f"not a version-{CACHE_VERSION} lickd autotune cache")
            for shapes in doc["devices"].values():
                for entry in shapes.values():
                    Config(int(entry["block_m"]), int(entry["warps"]), int(entry["splits"]))
            return doc["devices"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            warnings.warn(f"ignoring the autotune cache {self.path} ({e}); it will be rewritten", stacklevel=3)
            return {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"version": CACHE_VERSION, "devices": self._entries}
        # atomic: concurrent readers see the old or the new file
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def cached(self, device: torch.device, shape_key: str) -> Optional[Config]:
        entry = self._entries.get(device_key(device), {}).get(shape_key)
        return None if entry is None else Config(entry["block_m"], entry["warps"], entry["splits"])

    def choose(self, device: torch.device, shape_key: str, candidates: Iterable[Config],
               launch: Callable[[Config], list]) -> Config:
        """The cached config for this key, else the fastest candidate (each launched through
        ``launch``, which returns the compiled kernels so spilling variants can be dropped)."""
        hit = self.cached(device, shape_key)
        if hit is not None:
            return hit
        timings = {}
        for cfg in dict.fromkeys(candidates):  # unique, in order
            compiled = launch(cfg)
            if any(getattr(k, "n_spills", 0) for k in compiled if k is not None):
                continue
            timings[cfg] = self.timer(lambda: launch(cfg), cfg)
        if not timings:
            raise RuntimeError(f"autotune: every candidate for {shape_key} spills registers")
        best = min(timings, key=timings.get)
        self._entries.setdefault(device_key(device), {})[shape_key] = {**asdict(best), "ms": timings[best]}
        self._write()
        return best


_TUNER: Optional[Autotuner] = None


def enable_autotune(path: Optional[os.PathLike] = None, timer=None) -> Autotuner:
    """Tune (or read from the cache) every fused layer's launch config from now on."""
    global _TUNER
    _TUNER = Autotuner(path, timer)
    return _TUNER


def disable_autotune() -> None:
    global _TUNER
    _TUNER = None


def active_autotuner() -> Optional[Autotuner]:
    """The tuner in use: the one enabled in code, else one from ``LICKD_AUTOTUNE=1``, else None."""
    if _TUNER is None and os.environ.get("LICKD_AUTOTUNE") == "1":
        enable_autotune()
    return _TUNER


@contextlib.contextmanager
def autotuning(path: Optional[os.PathLike] = None, timer=None):
    """``enable_autotune`` inside a ``with`` block; the previous state is restored after it."""
    global _TUNER
    previous = _TUNER
    try:
        yield enable_autotune(path, timer)
    finally:
        _TUNER = previous
