"""A training run's files: the checkpoint (weights, optimisers, RNG, time spent), continuing a
run from its folder alone, and the weights file a run exports.

``training/<run>/checkpoint.safetensors`` is one file per run, replaced as the run improves
(docs/training.md); ``optimizer_state`` decides how much of Adam it keeps. ``export_run`` is the
one way a weights file is made from a run: at the end of training and by ``lickd export``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from .. import zoo
from ..entropy.models import EXPORT_SCALES_LEVELS, get_scale_table
from ..models import ARCHITECTURES, CompressionModel
from ..models.variable_rate import DEFAULT_QUALITY
from ..provenance import git_commit
from .config import TrainConfig

CHECKPOINT = "checkpoint.safetensors"
EXPORT = "model.safetensors"


def write_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    from ..fileio import atomic_save

    atomic_save(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                                            metadata={k: json.dumps(v) for k, v in metadata.items()}))


def read_tensors(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """A safetensors file's tensors (none when ``tensors`` is false) and its JSON metadata, from
    one open file (zoo.read_safetensors; CorruptFileError, a ValueError, if unreadable)."""
    data, meta = zoo.read_safetensors(path, tensors)
    return data, {k: json.loads(v) for k, v in meta.items()}


def read_checkpoint(run_dir: os.PathLike, tensors: bool = True) -> tuple[dict, dict]:
    """A run folder's checkpoint: its tensors (none when ``tensors`` is false) and its metadata,
    which holds at least the step and the configuration; a clear error for anything else."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    try:
        data, meta = read_tensors(path, tensors)
        int(meta["step"]), dict(meta["config"])
        return data, meta
    except (KeyError, TypeError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a lickd training checkpoint ({type(e).__name__}: {e})") from None


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str, kept: str = "full") -> tuple[dict, dict]:
    """Adam's state as tensors: all of it ("full"), the step and the second moment in bf16
    ("compact"; its first moment, an average over ~10 steps, re-forms at once), or nothing.
    ``load_optimizer`` reads any of the three back."""
    state = opt.state_dict()
    tensors = {}
    for idx, s in state["state"].items():
        for k, v in s.items():
            if kept == "none" or (kept == "compact" and k == "exp_avg"):
                continue
            tensors[f"{prefix}.{idx}.{k}"] = v.to(torch.bfloat16) if kept == "compact" and k == "exp_avg_sq" else v
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list, prefix: str) -> None:
    """Restores what ``optimizer_tensors`` kept; a missing first moment starts at zero, a missing
    state altogether means a fresh Adam (the schedule and hyper-parameters still come back)."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = value.float() if value.dtype == torch.bfloat16 else value
    for s in state.values():
        if "exp_avg_sq" in s and "exp_avg" not in s:
            s["exp_avg"] = torch.zeros_like(s["exp_avg_sq"])
    opt.load_state_dict({"state": state, "param_groups": groups})


#: fields a continued run may change: how long it runs, its data (folder, crop scales), where its
#: files are, how often it logs, what its checkpoints keep, where and how it runs (device,
#: precision, memory layout, fused kernels: tested to train the same model), its learning-rate
#: schedule from here on, and its quantisation from here on (a run may end on mixed rounding, the
#: same parameters trained against the latents decoding sees). The lr milestones are fractions of
#: ``steps``, so a new ``steps`` moves them too; the log records the lr of every logged step, and
#: its "resumed" record every field a continuation changed.
RESUMABLE_CHANGES = {"steps", "data", "crop_scale", "val_data", "val_images", "run_dir", "device", "log_every",
                     "val_every", "ckpt_every", "tensorboard", "name", "optimizer_state", "lr", "lr_milestones",
                     "lr_gamma", "amp", "channels_last", "fused", "quantization"}


def _as_saved(saved: dict, cfg: TrainConfig) -> tuple[dict, dict, dict]:
    """A checkpoint's config, ``cfg`` and the defaults, each as JSON would store it (tuples as
    lists), so that a field the checkpoint predates can count as its default value."""
    return tuple(json.loads(json.dumps(d)) for d in (saved, cfg.to_dict(), TrainConfig().to_dict()))


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """Fields that differ between a checkpoint's config and ``cfg``, but for RESUMABLE_CHANGES (a
    run can be extended, moved, ...); a field the checkpoint predates counts as its default value."""
    saved, now, defaults = _as_saved(saved, cfg)
    changed = []
    for key in sorted(set(now) - RESUMABLE_CHANGES):
        if isinstance(now[key], dict):
            old = {**defaults[key], **saved.get(key, {})}
            changed += [f"{key}.{k}" for k in sorted(now[key]) if old.get(k) != now[key][k]]
        elif saved.get(key, defaults[key]) != now[key]:
            changed.append(key)
    return changed


def resumed_changes(saved: dict, cfg: TrainConfig) -> dict[str, list]:
    """``{field: [saved value, new value]}`` for the RESUMABLE_CHANGES a continuation makes, what
    its "resumed" log record keeps; run_dir is left out (a folder moves with every fresh clone),
    the data folders are not (another training set is a change to the recipe)."""
    saved, now, defaults = _as_saved(saved, cfg)
    return {key: [saved.get(key, defaults[key]), now[key]] for key in sorted(RESUMABLE_CHANGES - {"run_dir"})
            if saved.get(key, defaults[key]) != now[key]}


def saved_config(run_dir: os.PathLike, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """The configuration a run folder's checkpoint was trained with, ``key=value`` overrides
    applied (only RESUMABLE_CHANGES may differ), its ``run_dir`` the folder given: what continues
    a run from the checkpoint alone, on any machine."""
    from .config import load_config

    saved = read_checkpoint(run_dir, tensors=False)[1]["config"]
    cfg = load_config(None, (), base=saved)
    cfg = load_config(None, (*overrides, f"run_dir={run_dir}"), base=cfg.to_dict())
    changed = config_changes(saved, cfg)
    if changed:
        raise ValueError(f"a continued run cannot change {', '.join(changed)}")
    return cfg


def export_run(run_dir: os.PathLike, output: os.PathLike, half: bool = False, name: Optional[str] = None) -> zoo.ModelInfo:
    """Registry-ready weights from a run's latest checkpoint (projections dropped, tables built)."""
    from .config import from_dict

    run_dir = Path(run_dir)
    tensors, meta = read_checkpoint(run_dir)
    cfg = from_dict(meta["config"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")} if cfg.ema > 0 else None
    model = exported_model(cfg.architecture, state, ema)
    info = run_model_info(cfg, model, int(meta["step"]), meta.get("world_size", 1), meta.get("cpu_seconds"), run_dir)
    if name:
        info.name = name
    return zoo.save_weights(model, output, info, half=half)


def exported_model(architecture: str, state: dict, ema: Optional[dict] = None) -> CompressionModel:
    """A plain model (eval mode, CPU) from a trained state: EMA parameters, when given, replace
    the live ones (buffers stay), and the CDF tables are built for it (lickd's finer scale table,
    EXPORT_SCALES_LEVELS entries)."""
    state = {k: v.detach().cpu() for k, v in state.items()}
    if ema:
        state.update({k: v.detach().cpu() for k, v in ema.items()})
    model = ARCHITECTURES[architecture].from_state_dict(state)
    model.eval().update(scale_table=get_scale_table(levels=EXPORT_SCALES_LEVELS), force=True)
    return model


def run_model_info(cfg: TrainConfig, model: CompressionModel, step: int, world: int,
                   cpu_seconds: Optional[float], run_dir: Path) -> zoo.ModelInfo:
    """What a weights file exported from a run says about it (one builder for the export at the
    end of training and ``lickd export``)."""
    variable = model.variable_rate
    return zoo.ModelInfo(
        name=cfg.name or Path(run_dir).name, architecture=cfg.architecture, N=model.N, M=model.M,
        quality=DEFAULT_QUALITY if variable else None, lmbda=None if variable else cfg.lmbda, metric=cfg.metric,
        training={"steps": step, "seed": cfg.seed, "teacher": cfg.kd.teacher if cfg.distilling else None,
                  "kd": cfg.to_dict()["kd"] if cfg.kd.teacher else None, "commit": git_commit(),
                  "batch_size": cfg.batch_size * world, "patch_size": cfg.patch_size,
                  "init": cfg.init, "init_parts": cfg.init_parts, "init_widen": cfg.init_widen,
                  "cpu_hours": round(cpu_seconds / 3600, 3) if cpu_seconds is not None else None})


__all__ = ["CHECKPOINT", "EXPORT", "RESUMABLE_CHANGES", "config_changes", "export_run", "exported_model", "load_optimizer",
           "optimizer_tensors", "read_checkpoint", "read_tensors", "resumed_changes", "run_model_info", "saved_config",
           "write_tensors"]
