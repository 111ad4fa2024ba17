"""The training engine for teachers, distilled students and their no-KD controls.

One process per device (``torchrun --nproc_per_node K -m lickd.train ...``, or a plain single
process); DistributedDataParallel over NCCL on GPUs and gloo on CPUs. Everything a run depends on
is seeded from integers and checkpointed in safetensors (weights, optimiser moments, the
schedule, every rank's RNG and crop-sampler state), so ``--resume`` continues bit for bit.
A checkpoint is written every ``ckpt_every`` steps and when SIGTERM arrives. At the end the
entropy models are updated and the run is exported as a registry-ready weights file.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from .. import zoo
from ..accelerate import accelerate
from ..models import ARCHITECTURES, CompressionModel, build_model
from ..provenance import environment, git_commit
from .config import TrainConfig, save_config
from .data import CropSampler, ImageFolder
from .losses import DistillationLoss, Projection, RateDistortionLoss

CHECKPOINT = "checkpoint.safetensors"
EXPORT = "model.safetensors"


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return load_file(str(path)), meta


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    state = opt.state_dict()
    tensors = {f"{prefix}.{idx}.{k}": v for idx, s in state["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list, prefix: str) -> None:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo", device_id=self.device if want_cuda else None)
        self.is_main = self.rank == 0
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress and self.is_main
        self.stop_requested = False

        # Model, identical on every rank (DDP also broadcasts rank 0's at wrap time).
        torch.manual_seed(cfg.seed)
        if cfg.init:
            self.model, _ = zoo.load_weights(cfg.init, device=self.device)
        else:
            self.model = build_model(cfg.architecture, cfg.N, cfg.M).to(self.device)
        self.model.train()
        self.teacher = self._load_teacher(cfg.kd.teacher) if cfg.distilling else None
        self.hybrid_teacher = self._load_teacher(cfg.kd.hybrid_teacher) if cfg.distilling and cfg.kd.hybrid_teacher else None
        for m in (self.model, self.teacher, self.hybrid_teacher):
            if m is None:
                continue
            if cfg.fused:  # same parameters and state_dict keys; PyTorch layers wherever kernels don't apply
                accelerate(m, dtype=torch.bfloat16 if cfg.amp else torch.float32)
            if cfg.channels_last:
                m.to(memory_format=torch.channels_last)
        self.projection = Projection({}, {})
        if self.teacher is not None:
            widths = {"y": self.model.M, "z": self.model.N}
            z_teacher = self.hybrid_teacher or self.teacher
            self.projection = Projection(widths, {"y": self.teacher.M, "z": z_teacher.N}).to(self.device)
            weights = {"y": cfg.kd.y, "z": cfg.kd.z, "x": cfg.kd.x, "rd": cfg.kd.rd}
            self.loss_fn = DistillationLoss(cfg.lmbda, cfg.metric, weights, self.projection)
        else:
            self.loss_fn = RateDistortionLoss(cfg.lmbda, cfg.metric)

        # Optimisers: the EntropyBottleneck quantiles train only on the aux loss.
        named = dict(self.model.named_parameters())
        self.aux_params = [p for n, p in named.items() if n.endswith("quantiles")]
        self.net_params = [p for n, p in named.items() if not n.endswith("quantiles")] + list(self.projection.parameters())
        self.optimizer = torch.optim.Adam(self.net_params, lr=cfg.lr)
        self.aux_optimizer = torch.optim.Adam(self.aux_params, lr=cfg.aux_lr)
        self.ema = ({n: p.detach().clone() for n, p in named.items()} if cfg.ema > 0 else None)
        self.step = 0

        # Data: crops differ per rank; noise too.
        self.data = ImageFolder(cfg.data, cfg.patch_size, self.device)
        self.sampler = CropSampler(self.data, cfg.batch_size, seed=cfg.seed * 1009 + self.rank)
        torch.manual_seed(cfg.seed * 7919 + self.rank + 1)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        elif self.is_main:
            save_config(cfg, self.run_dir / "config.json", self.environment())
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, device_ids=[local_rank] if want_cuda else None)
                    if self.world > 1 else self.model)
        self.writer = self._tensorboard()

    # ------------------------------------------------------------------ setup helpers
    def _load_teacher(self, path: str) -> CompressionModel:
        teacher, _ = zoo.load_weights(path, device=self.device)
        teacher.train()  # training-mode quantisation (noise), shared with the student; no dropout/BN
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def environment(self) -> dict:
        return {**environment(), "world_size": self.world, "device": str(self.device),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _tensorboard(self):
        if not (self.is_main and self.cfg.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    def lr_factor(self, step: int) -> float:
        passed = sum(step >= m * self.cfg.steps for m in self.cfg.lr_milestones)
        return self.cfg.lr_gamma**passed

    # ------------------------------------------------------------------ one step
    def _teacher_targets(self, x: torch.Tensor) -> Optional[dict]:
        """Teacher outputs under no_grad, drawing the same quantisation noise the student will."""
        if self.teacher is None:
            return None
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

        def restore():
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, self.device)

        with torch.no_grad(), self._autocast():
            out = self.teacher(x)
            restore()
            if self.hybrid_teacher is not None:
                out["latents"]["z"] = self.hybrid_teacher(x)["latents"]["z"]
                restore()
        return {"x_hat": out["x_hat"].detach(), "latents": {k: v.detach() for k, v in out["latents"].items()}}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def train_step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * self.lr_factor(self.step)
        x = self.sampler.next()
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = self._teacher_targets(x)
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.ddp(x)
        terms = self.loss_fn(out, x, targets) if targets is not None else self.loss_fn(out, x)
        aux = self.model.aux_loss()
        # One backward: the aux loss reaches only the quantiles, the main loss everything else.
        (terms["loss"] + aux).backward()
        if self.world > 1:  # the KD projections live outside DDP: average their gradients by hand
            for p in self.projection.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.net_params, cfg.clip_max_norm)
        self.optimizer.step()
        self.aux_optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    self.ema[n].lerp_(p.detach(), 1 - cfg.ema)
        self.step += 1
        # Detached tensors: converting to Python floats would sync the GPU every step.
        stats = {k: v.detach() for k, v in terms.items()}
        stats["aux"] = aux.detach()
        return stats

    # ------------------------------------------------------------------ checkpoints
    def _rng_path(self, rank: int) -> Path:
        return self.run_dir / f"rng-rank{rank}.safetensors"

    def save_checkpoint(self) -> None:
        """Weights and optimisers (rank 0) plus every rank's RNG and sampler state."""
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        _atomic_save(rng, self._rng_path(self.rank), {"step": self.step})
        if self.is_main:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            tensors.update({f"projection.{k}": v for k, v in self.projection.state_dict().items()})
            if self.ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
            opt, opt_meta = _optimizer_tensors(self.optimizer, "opt")
            aux, aux_meta = _optimizer_tensors(self.aux_optimizer, "aux_opt")
            tensors.update(opt)
            tensors.update(aux)
            _atomic_save(tensors, self.run_dir / CHECKPOINT,
                         {"step": self.step, "opt": opt_meta, "aux_opt": aux_meta, "config": self.cfg.to_dict()})
        if self.world > 1:
            dist.barrier()

    def load_checkpoint(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir}")
        tensors, meta = _read(path)
        changed = _config_changes(meta["config"], self.cfg)
        if changed:
            raise ValueError(f"--resume with a different configuration ({', '.join(changed)})")

        def part(prefix):
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        self.model.load_state_dict(part("model"))
        self.projection.load_state_dict(part("projection"))
        if self.ema is not None:
            self.ema = {k: v.to(self.device) for k, v in part("ema").items()}
        _load_optimizer(self.optimizer, tensors, meta["opt"]["param_groups"], "opt")
        _load_optimizer(self.aux_optimizer, tensors, meta["aux_opt"]["param_groups"], "aux_opt")
        self.step = int(meta["step"])
        rng, rng_meta = _read(self._rng_path(self.rank))
        if int(rng_meta["step"]) != self.step:
            raise RuntimeError(f"rank {self.rank} RNG state is from step {rng_meta['step']}, weights from {self.step}")
        torch.set_rng_state(rng["torch"])
        self.sampler.set_state(rng["sampler"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    # ------------------------------------------------------------------ evaluation and export
    def export_model(self) -> CompressionModel:
        """A copy of the trained model (EMA weights if enabled) with updated CDF tables."""
        model = copy.deepcopy(self.model).eval()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(self.ema[n])
        model.update(force=True)
        return model

    def model_info(self) -> zoo.ModelInfo:
        cfg = self.cfg
        return zoo.ModelInfo(
            name=cfg.name or self.run_dir.name, architecture=cfg.architecture, N=self.model.N, M=self.model.M,
            lmbda=cfg.lmbda, metric=cfg.metric,
            training={"steps": self.step, "seed": cfg.seed, "teacher": cfg.kd.teacher if cfg.distilling else None,
                      "kd": cfg.to_dict()["kd"] if cfg.kd.teacher else None, "commit": git_commit(),
                      "batch_size": cfg.batch_size * self.world, "patch_size": cfg.patch_size})

    def validate(self) -> dict[str, float]:
        """Actual-bytes bpp and PSNR on the first ``val_images`` validation images, with the
        likelihood estimate beside it."""
        from ..codec import StudentCodec
        from ..image import list_images
        from ..eval.metrics import psnr_rgb
        from ..eval.runner import load_rgb
        from ..image import pad_to_multiple, to_tensor
        from .losses import bpp

        cfg = self.cfg
        if not cfg.val_data or not Path(cfg.val_data).is_dir():
            return {}
        model = self.export_model()
        codec = StudentCodec(model, self.model_info(), device=self.device)
        rows = []
        for path in list_images(cfg.val_data)[: cfg.val_images]:
            img = load_rgb(path)
            data = codec.compress(img)
            out = codec.decompress(data, output="numpy")
            with torch.no_grad():
                x = pad_to_multiple(to_tensor(img)[0].to(self.device), model.downsampling_factor)
                est = float(bpp(model(x)["likelihoods"], img.shape[0] * img.shape[1]))
            rows.append((8 * len(data) / (img.shape[0] * img.shape[1]), est, psnr_rgb(img, out)))
            if self.writer is not None and len(rows) == 1:  # one sample reconstruction per validation
                self.writer.add_image("val/reconstruction", torch.from_numpy(out.copy()).permute(2, 0, 1), self.step)
        if not rows:
            return {}
        n = len(rows)
        return {"val/bpp": sum(r[0] for r in rows) / n, "val/bpp_estimated": sum(r[1] for r in rows) / n,
                "val/psnr": sum(r[2] for r in rows) / n}

    def weights_fingerprint(self) -> float:
        """A float64 sum of every trained parameter (model and KD projections): equal on all ranks."""
        params = list(self.model.parameters()) + list(self.projection.parameters())
        return float(sum(p.detach().double().sum() for p in params))

    # ------------------------------------------------------------------ loop
    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **record}) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k if "/" in k else f"train/{k}", v, self.step)

    def _sync_stop(self) -> bool:
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)  # NCCL needs CUDA tensors
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def train(self) -> dict:
        cfg = self.cfg
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, file=sys.stderr, unit="step")
        if self.is_main and self.step == 0:
            self._log({"event": "start", "aux_note": "aux loss trains only the EntropyBottleneck quantiles "
                                                    "(its CDF support); it does not affect the RD loss"})
        try:
            while self.step < cfg.steps:
                stats = self.train_step()
                bar.update()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    stats = {k: float(v) for k, v in stats.items()}
                    stats["lr"] = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", bpp=f"{stats['bpp']:.3f}", psnr=f"{stats['psnr']:.2f}")
                    self._log(stats)
                if self.is_main and cfg.val_every and self.step % cfg.val_every == 0:
                    self._log(self.validate())
                stop = self._sync_stop()
                if self.step % cfg.ckpt_every == 0 or stop or self.step == cfg.steps:
                    self.save_checkpoint()
                if stop:
                    self._log({"event": "stopped by SIGTERM"})
                    return {"step": self.step, "stopped": True}
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.finish()

    def finish(self) -> dict:
        """Checks that every rank holds the same weights, then exports the model (rank 0)."""
        fingerprint = self.weights_fingerprint()
        prints = [fingerprint]
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, fingerprint)
            prints = gathered
            if len(set(prints)) != 1:
                raise RuntimeError(f"ranks hold different weights: {prints}")
        summary = {"step": self.step, "stopped": False, "rank_fingerprints": prints}
        if self.is_main:
            summary.update(self.validate())
            info = zoo.save_weights(self.export_model(), self.run_dir / EXPORT, self.model_info())
            summary.update(export=str(info.path), sha256=info.sha256)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self._log({"event": "finished", **{k: v for k, v in summary.items() if k != "rank_fingerprints"}})
        if self.writer is not None:
            self.writer.close()
        return summary

    def close(self) -> None:
        """Waits for every rank, then tears the process group down (its threads must not outlive
        the interpreter)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True


def _config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """Fields that differ between a checkpoint's config and ``cfg``. ``steps`` may grow (a run can
    be extended); a field the checkpoint predates counts as its default value."""
    from .config import TrainConfig as Defaults

    saved, now, defaults = (json.loads(json.dumps(d)) for d in (saved, cfg.to_dict(), Defaults().to_dict()))
    changed = []
    for key in sorted(set(now) - {"steps"}):
        if isinstance(now[key], dict):
            old = {**defaults[key], **saved.get(key, {})}
            changed += [f"{key}.{k}" for k in sorted(now[key]) if old.get(k) != now[key][k]]
        elif saved.get(key, defaults[key]) != now[key]:
            changed.append(key)
    return changed


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def export_run(run_dir: os.PathLike, output: os.PathLike, half: bool = False, name: Optional[str] = None) -> zoo.ModelInfo:
    """Registry-ready weights from a run's latest checkpoint (projections dropped, tables built)."""
    from .config import from_dict

    run_dir = Path(run_dir)
    tensors, meta = _read(run_dir / CHECKPOINT)
    cfg = from_dict(meta["config"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if cfg.ema > 0:  # EMA parameters replace the live ones; buffers stay
        state.update({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    model = ARCHITECTURES[cfg.architecture].from_state_dict(state)
    model.eval().update(force=True)
    info = zoo.ModelInfo(name=name or cfg.name or run_dir.name, architecture=cfg.architecture, N=model.N, M=model.M,
                         lmbda=cfg.lmbda, metric=cfg.metric,
                         training={"steps": int(meta["step"]), "seed": cfg.seed,
                                   "teacher": cfg.kd.teacher if cfg.distilling else None})
    return zoo.save_weights(model, output, info, half=half)
