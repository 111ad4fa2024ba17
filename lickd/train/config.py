"""Typed training configuration: a TOML file plus ``key=value`` overrides, saved with every run.

Every field a run depends on lives here, so what was trained is exactly what the saved
``config.json`` says (the seed paper's loss weights reported != used cannot happen).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class KDConfig:
    """Distillation: a frozen teacher (lickd weights file) and the weights of each loss term.

    Terms: ``y`` and ``z`` are MSEs between the student's and teacher's continuous latents (through
    a learned 1x1 projection when widths differ), ``x`` is lambda * 255^2 * MSE between the
    reconstructions (the same scale as the distortion term), ``rd`` the student's own RD loss.
    ``hybrid_teacher`` optionally supplies the z target (the seed paper's two-teacher variant).
    """

    teacher: Optional[str] = None
    hybrid_teacher: Optional[str] = None
    y: float = 0.2
    z: float = 0.0
    x: float = 0.2
    rd: float = 0.6
    no_kd: bool = False  # the matched-budget control: same student, seed, steps, only the rd term


@dataclass
class TrainConfig:
    # model
    architecture: str = "mbt2018-mean"
    N: int = 64
    M: int = 192
    init: Optional[str] = None  # lickd weights file to start from
    # comma-separated modules (e.g. "g_a,g_s,gain_units") taken from ``init``, the rest fresh: a
    # warm start across architectures (a scale hyperprior from a mean-scale model's transforms)
    init_parts: Optional[str] = None
    # ``init`` is a narrower model (N; the same M) of this architecture, grown to N with its function kept
    # (lickd.train.warm.widen): a teacher started from a trained student
    init_widen: bool = False
    # objective
    lmbda: float = 0.0067
    metric: str = "mse"  # or "ms-ssim"
    # data
    data: str = "../shared/data/train"
    val_data: Optional[str] = "../shared/data/kodak"
    val_images: int = 4
    patch_size: int = 256
    batch_size: int = 16
    # each crop covers a region 1/s times the patch, resized (antialiased) to the patch, s drawn
    # log-uniformly in [low, high] (clamped where the image is too small); (1, 1): plain crops.
    # Downscaling removes noise and JPEG artefacts of the training photos and varies their scale
    crop_scale: tuple[float, ...] = (1.0, 1.0)
    # optimisation
    steps: int = 100_000
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_milestones: tuple[float, ...] = (0.8, 0.95)  # fractions of steps where lr *= lr_gamma
    lr_gamma: float = 0.3
    # what h_s and g_s see of the quantised latents in training: "noise" (CompressAI's uniform
    # noise) or "mixed" (noise for the rate terms, straight-through rounding into the synthesis)
    quantization: str = "noise"
    # variable rate: each crop's quality drawn "uniform"ly and independently, or "stratified" (every
    # quality equally often in each batch: lower gradient variance, the same expectation)
    quality_sampling: str = "uniform"
    clip_max_norm: float = 1.0
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off)
    # bf16 autocast of the transforms (entropy models stay fp32): true, false, or "auto": on where
    # the hardware runs bf16 natively (CUDA; CPUs with AVX-512 BF16 or AMX), off elsewhere (on an
    # AVX2-only CPU bf16 autocast was measured 6-24x slower than fp32). lickd.cpu.resolve_amp.
    amp: Any = "auto"
    channels_last: bool = False  # NHWC weights and crops: oneDNN's faster convolutions on CPUs
    fused: bool = False  # run g_a/g_s (student and teacher) with lickd.kernels on GPUs (not yet timed on one)
    seed: int = 0
    device: str = "auto"
    # what a checkpoint keeps of Adam's state: "full" (fp32 moments: resume is bit-exact),
    # "compact" (the second moment in bf16, the first dropped: half the size, for checkpoints
    # kept in git; the first moment re-forms in ~10 steps) or "none" (weights only)
    optimizer_state: str = "full"
    # bookkeeping
    run_dir: str = "runs/default"
    log_every: int = 50
    val_every: int = 5_000
    ckpt_every: int = 1_000
    tensorboard: bool = True
    name: Optional[str] = None  # model name at export (default: run folder name)
    kd: KDConfig = field(default_factory=KDConfig)

    @property
    def distilling(self) -> bool:
        return self.kd.teacher is not None and not self.kd.no_kd

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: str, current: Any, key: str) -> Any:
    """Parses an override value as the type of the field it replaces."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean, got {value!r}")
    if isinstance(current, tuple):
        return tuple(float(v) for v in value.split(",") if v.strip())
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if value.lower() in ("none", "null", ""):
        return None
    return value


def _apply(cfg, data: dict, prefix: str = "") -> None:
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key '{prefix}{key}'")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"'{prefix}{key}' is a section")
            _apply(current, value, f"{prefix}{key}.")
        else:
            setattr(cfg, key, tuple(value) if isinstance(current, tuple) else value)


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] = (), base: Optional[dict] = None) -> TrainConfig:
    """TOML file (optional; or ``base``, a saved configuration) then ``key=value`` /
    ``kd.key=value`` overrides, checked against the fields."""
    cfg = TrainConfig()
    if base is not None:
        _apply(cfg, base)
    if path:
        with open(path, "rb") as f:
            _apply(cfg, tomllib.load(f))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        *sections, leaf = key.strip().split(".")
        target = cfg
        for s in sections:
            target = getattr(target, s, None)
            if not dataclasses.is_dataclass(target):
                raise ValueError(f"unknown config section in {key!r}")
        if leaf not in {f.name for f in dataclasses.fields(target)}:
            raise ValueError(f"unknown config key {key!r}")
        setattr(target, leaf, _coerce(value.strip(), getattr(target, leaf), key))
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if isinstance(cfg.amp, str) and cfg.amp != "auto":
        cfg.amp = _coerce(cfg.amp, False, "amp")
    if cfg.amp not in (True, False, "auto"):
        raise ValueError("amp must be true, false or auto")
    if cfg.optimizer_state not in ("full", "compact", "none"):
        raise ValueError("optimizer_state must be full, compact or none")
    if cfg.quantization not in ("noise", "mixed"):
        raise ValueError("quantization must be noise or mixed")
    if cfg.quality_sampling not in ("uniform", "stratified"):
        raise ValueError("quality_sampling must be uniform or stratified")
    if cfg.metric not in ("mse", "ms-ssim"):
        raise ValueError("metric must be 'mse' or 'ms-ssim'")
    if cfg.init_parts and not cfg.init:
        raise ValueError("init_parts names modules of an init weights file: set init too")
    if cfg.init_widen and (not cfg.init or cfg.init_parts):
        raise ValueError("init_widen grows the init weights file as a whole: set init, and not init_parts")
    if len(cfg.crop_scale) != 2 or not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:  # NaN fails too
        raise ValueError("crop_scale must be two scales low,high with 0 < low <= high <= 1")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    factor = 16 if cfg.architecture == "bmshj2018-factorized" else 64
    if cfg.patch_size < factor or cfg.patch_size % factor:
        raise ValueError(f"patch_size must be a multiple of {factor} for {cfg.architecture}")
    if cfg.metric == "ms-ssim" and cfg.patch_size <= 160:
        raise ValueError("metric ms-ssim needs patch_size > 160 (five MS-SSIM scales)")
    if cfg.kd.no_kd and cfg.kd.teacher is None:
        raise ValueError("kd.no_kd is the control of a distillation run: give kd.teacher too")


def save_config(cfg: TrainConfig, path: Path, extra: dict) -> None:
    path.write_text(json.dumps({"config": cfg.to_dict(), **extra}, indent=2) + "\n")


def from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data)
    validate(cfg)
    return cfg
