"""The training loop for teachers, distilled students and their no-KD controls.

One process per device (``torchrun --nproc_per_node K -m lickd.cli train ...``, or a plain single
process; lickd.train.distributed). Everything a run depends on is seeded from integers and kept
in its checkpoint (lickd.train.checkpoint: weights, optimiser state, schedule, RNG and
crop-sampler state, time spent), written every ``ckpt_every`` steps and when SIGTERM arrives, so
a run continues from its folder on any machine (docs/training.md). At the end the run is
exported as a registry-ready weights file.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import zoo
from ..accelerate import accelerate
from ..cpu import resolve_amp, retain_freed_memory
from ..models import CompressionModel, build_model, quality_lambda
from ..models.variable_rate import QUALITY_LEVELS
from ..provenance import environment
from .checkpoint import (CHECKPOINT, EXPORT, config_changes, export_run, exported_model, load_optimizer,
                         optimizer_tensors, read_checkpoint, read_tensors, resumed_changes, run_model_info,
                         write_tensors)
from .config import TrainConfig, save_config
from .data import CropSampler, ImageFolder
from .distributed import World
from .losses import DistillationLoss, Projection, RateDistortionLoss
from .warm import warm_start, widen

PROBE_SEED = 20261201  # the fixed crops, noise and qualities of Trainer.probe


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.dist = World.join(cfg.device)
        self.world, self.rank, self.device, self.is_main = self.dist.size, self.dist.rank, self.dist.device, self.dist.is_main
        self.amp = resolve_amp(cfg.amp, self.device.type)
        if self.device.type == "cpu":
            retain_freed_memory()  # each step reallocates the same activations (lickd.cpu)
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress and self.is_main
        self.stop_requested = False
        self.warm_started: list[str] = []  # tensor names taken from cfg.init by init_parts or grown by init_widen

        # Model, identical on every rank (DDP also broadcasts rank 0's at wrap time).
        torch.manual_seed(cfg.seed)
        if cfg.init and not resume and not (cfg.init_parts or cfg.init_widen):
            self.model, _ = zoo.load_weights(cfg.init, device=self.device)
        else:  # a resumed run takes its weights from its checkpoint: the init file need not exist any more
            self.model = build_model(cfg.architecture, cfg.N, cfg.M).to(self.device)
            if cfg.init and not resume:
                source = zoo.load_weights(cfg.init, device=self.device)[0]
                self.warm_started = (widen(self.model, source) if cfg.init_widen else
                                     warm_start(self.model, source, cfg.init_parts.split(",")))
        got = (self.model.architecture, self.model.N, self.model.M)
        if got != (cfg.architecture, cfg.N, cfg.M):  # the config must say what the run trains
            raise ValueError(f"init {cfg.init} is {got[0]} N={got[1]} M={got[2]}; the configuration says "
                             f"{cfg.architecture} N={cfg.N} M={cfg.M}")
        self.model.train()
        self.variable_rate = self.model.variable_rate
        self.teacher = self._load_teacher(cfg.kd.teacher) if cfg.distilling else None
        if self.teacher is not None and self.teacher.variable_rate != self.variable_rate:
            raise ValueError("a variable-rate student needs a variable-rate teacher, a fixed-rate one a fixed-rate teacher")
        self.hybrid_teacher = self._load_teacher(cfg.kd.hybrid_teacher) if cfg.distilling and cfg.kd.hybrid_teacher else None
        for m in (self.model, self.teacher, self.hybrid_teacher):
            if m is None:
                continue
            if cfg.fused:  # same parameters and state_dict keys; PyTorch layers wherever kernels don't apply
                accelerate(m, dtype=torch.bfloat16 if self.amp else torch.float32)
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
        self.cpu_seconds = self.wall_seconds = 0.0  # spent on this run so far, all sessions together
        self._clock = (time.process_time(), time.time())
        self.saved_probe: Optional[float] = None  # the probe loss the resumed checkpoint logged

        # Data: crops differ per rank; noise too.
        self.data = ImageFolder(cfg.data, cfg.patch_size, self.device)
        self.sampler = CropSampler(self.data, cfg.batch_size, seed=cfg.seed * 1009 + self.rank, scale=cfg.crop_scale)
        torch.manual_seed(cfg.seed * 7919 + self.rank + 1)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = self._tensorboard()
        if resume:
            self.load_checkpoint()
        elif self.is_main:
            save_config(cfg, self.run_dir / "config.json", self.environment())
        cuda = self.device.type == "cuda"
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, device_ids=[self.dist.local_rank] if cuda else None)
                    if self.world > 1 else self.model)

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
    def _teacher_targets(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> Optional[dict]:
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
            out = self.teacher(x, quality, self.cfg.quantization)
            restore()
            if self.hybrid_teacher is not None:
                out["latents"]["z"] = self.hybrid_teacher(x, quality, self.cfg.quantization)["latents"]["z"]
                restore()
        return {"x_hat": out["x_hat"].detach(), "latents": {k: v.detach() for k, v in out["latents"].items()}}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def train_step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * self.lr_factor(self.step)
        x = self.sampler.next()
        # A variable-rate model trains every quality at once: one drawn per crop, with its lambda.
        quality = (self.sampler.qualities(QUALITY_LEVELS, cfg.quality_sampling == "stratified").to(self.device)
                   if self.variable_rate else None)
        lmbda = _lambdas(quality)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = self._teacher_targets(x, quality)
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.ddp(x, quality, cfg.quantization)
        terms = (self.loss_fn(out, x, targets, lmbda=lmbda) if targets is not None
                 else self.loss_fn(out, x, lmbda=lmbda))
        aux = self.model.aux_loss()
        # One backward: the aux loss reaches only the quantiles, the main loss everything else.
        (terms["loss"] + aux).backward()
        self.dist.average_gradients(self.projection.parameters())  # the KD projections live outside DDP
        # the total norm before clipping, logged: with CompressAI's clip_max_norm = 1, all of 30 steps
        # of the 2 x 256^2 variable-rate student (at 4,000 steps) were clipped, from norms of 1.02 ... 73
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.net_params, cfg.clip_max_norm) if cfg.clip_max_norm > 0
                     else None)
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
        if grad_norm is not None:
            stats["grad_norm"] = grad_norm.detach()
        return stats

    # ------------------------------------------------------------------ checkpoints
    def _rng_path(self, rank: int) -> Path:
        return self.run_dir / f"rng-rank{rank}.safetensors"

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _spent(self) -> tuple[float, float]:
        """CPU seconds (all threads of this process) and wall seconds of the run, all sessions."""
        return (self.cpu_seconds + time.process_time() - self._clock[0],
                self.wall_seconds + time.time() - self._clock[1])

    def probe(self, quantization: str = "noise") -> float:
        """The RD loss on a fixed batch (fixed crops, noise and qualities): for a given training
        set, crop and batch size a number that depends on the weights alone, logged with every
        checkpoint, so a continued run can check that it starts from what was saved. With noise
        quantisation whatever the run trains with (checkpoints say so as ``probe_quantization``),
        so a run that switches to mixed rounding keeps a comparable probe; checkpoints written
        before that used the run's own quantisation, and their check uses it too."""
        sampler = CropSampler(self.data, min(self.cfg.batch_size, 8), seed=PROBE_SEED)
        x = sampler.next()
        quality = (torch.arange(x.size(0)) % QUALITY_LEVELS + 1).to(self.device) if self.variable_rate else None
        rd = RateDistortionLoss(self.cfg.lmbda, self.cfg.metric)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(PROBE_SEED)
            out = self.model(x, quality, quantization)
            return float(rd(out, x, lmbda=_lambdas(quality))["rd"])

    def save_checkpoint(self) -> None:
        """Rank 0: one file with the weights, the optimisers (as ``optimizer_state`` says), the
        schedule, its own RNG and sampler state and the time spent; other ranks: their RNG."""
        if not self.is_main:
            write_tensors(self._rng_state(), self._rng_path(self.rank), {"step": self.step})
        else:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            tensors.update({f"projection.{k}": v for k, v in self.projection.state_dict().items()})
            if self.ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
            kept = self.cfg.optimizer_state
            opt, opt_meta = optimizer_tensors(self.optimizer, "opt", kept)
            aux, aux_meta = optimizer_tensors(self.aux_optimizer, "aux_opt", kept)
            tensors.update(opt)
            tensors.update(aux)
            tensors.update({f"rng.{k}": v for k, v in self._rng_state().items()})
            cpu, wall = self._spent()
            probe = self.probe()
            write_tensors(tensors, self.run_dir / CHECKPOINT,
                         {"step": self.step, "opt": opt_meta, "aux_opt": aux_meta, "config": self.cfg.to_dict(),
                          "cpu_seconds": cpu, "wall_seconds": wall, "probe_rd": probe, "probe_quantization": "noise",
                          "optimizer_state": kept, "world_size": self.world})
            self._log({"event": "checkpoint", "probe_rd": probe, "cpu_seconds": round(cpu, 1),
                       "wall_seconds": round(wall, 1)})
        self.dist.barrier()

    def load_checkpoint(self) -> None:
        tensors, meta = read_checkpoint(self.run_dir)
        changed = config_changes(meta["config"], self.cfg)
        if changed:
            raise ValueError(f"--resume with a different configuration ({', '.join(changed)})")

        def part(prefix):
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        try:
            self.model.load_state_dict(part("model"))
            self.projection.load_state_dict(part("projection"))
            if self.ema is not None:
                self.ema = {k: v.to(self.device) for k, v in part("ema").items()}
            load_optimizer(self.optimizer, tensors, meta["opt"]["param_groups"], "opt")
            load_optimizer(self.aux_optimizer, tensors, meta["aux_opt"]["param_groups"], "aux_opt")
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{self.run_dir / CHECKPOINT}: its state does not fit this run "
                             f"({type(e).__name__}: {e})") from None
        self.step = int(meta["step"])
        self.cpu_seconds, self.wall_seconds = float(meta.get("cpu_seconds", 0)), float(meta.get("wall_seconds", 0))
        self._clock = (time.process_time(), time.time())
        self.saved_probe = meta.get("probe_rd")
        rng = part("rng")
        if not rng or not self.is_main:  # other ranks (and checkpoints before the merge): their own file
            rng, rng_meta = read_tensors(self._rng_path(self.rank))
            if int(rng_meta["step"]) != self.step:
                raise RuntimeError(f"rank {self.rank} RNG state is from step {rng_meta['step']}, weights from {self.step}")
        torch.set_rng_state(rng["torch"])
        self.sampler.set_state(rng["sampler"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        # the quantisation the saved probe used (checkpoints before probe_quantization: the run's own)
        probe_quantization = meta.get("probe_quantization", meta["config"].get("quantization", "noise"))
        self._continue_log(resumed_changes(meta["config"], self.cfg), probe_quantization)

    def _continue_log(self, changes: dict, probe_quantization: str) -> None:
        """On resume: the log keeps what led to the checkpoint (steps logged after it, by a run
        that stopped without one, are dropped, as their training is), and a "resumed" record
        compares the probe of the loaded weights with the one the checkpoint saved (another CPU
        rounds differently: 1e-3 relative is a warning, not an error) and lists the fields the
        continuation changed (``changes``: saved and new values)."""
        if not self.is_main:
            return
        log = self.run_dir / "metrics.jsonl"
        if log.is_file():
            kept = [line for line in log.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            log.write_text("".join(kept))
        probe = self.probe(probe_quantization)
        record = {"event": "resumed", "probe_rd": probe, "saved_probe_rd": self.saved_probe}
        if changes:
            record["changed"] = changes
        if self.saved_probe is not None and abs(probe - self.saved_probe) > 1e-3 * abs(self.saved_probe):
            record["warning"] = "the loaded weights do not give the saved probe loss"
            print(f"lickd train: warning: {self.run_dir}: probe loss {probe:.6g}, the checkpoint saved "
                  f"{self.saved_probe:.6g}", file=sys.stderr)
        self._log(record)

    # ------------------------------------------------------------------ evaluation and export
    def export_model(self) -> CompressionModel:
        """The model as it would be exported now (EMA weights if enabled, CDF tables built)."""
        return exported_model(self.cfg.architecture, self.model.state_dict(), self.ema)

    def model_info(self) -> zoo.ModelInfo:
        return run_model_info(self.cfg, self.model, self.step, self.world, self._spent()[0], self.run_dir)

    def validate(self) -> dict[str, float]:
        """Actual-bytes bpp and PSNR on the first ``val_images`` validation images, with the
        likelihood estimate beside it."""
        from ..codec import StudentCodec
        from ..eval.codecs import LickdCodec
        from ..eval.runner import measure
        from ..image import list_images, load_rgb, pad_to_multiple, to_tensor
        from .losses import bpp

        cfg = self.cfg
        if not cfg.val_data or not Path(cfg.val_data).is_dir():
            return {}
        model = self.export_model().to(self.device)
        codec = StudentCodec(model, self.model_info(), device=self.device)
        point = LickdCodec(codec)  # a variable-rate model: at its default quality
        rows = []
        for path in list_images(cfg.val_data)[: cfg.val_images]:
            img = load_rgb(path)
            row = measure(point, img)  # real file bytes and the decoded image, as lickd eval measures
            with torch.no_grad():
                x = pad_to_multiple(to_tensor(img)[0].to(self.device), model.downsampling_factor)
                row["estimated"] = float(bpp(model(x, codec.quality)["likelihoods"], img.shape[0] * img.shape[1]))
            rows.append(row)
            if self.writer is not None and len(rows) == 1:  # one sample reconstruction per validation
                out = codec.decompress(codec.compress(img), output="tensor")
                self.writer.add_image("val/reconstruction", out, self.step)
        if not rows:
            return {}
        return {f"val/{name}": sum(r[key] for r in rows) / len(rows)
                for name, key in (("bpp", "bpp"), ("bpp_estimated", "estimated"), ("psnr", "psnr-rgb"))}

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

    def train(self) -> dict:
        cfg = self.cfg
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, file=sys.stderr, unit="step")
        if self.is_main and self.step == 0:
            self._log({"event": "start", "aux_note": "aux loss trains only the EntropyBottleneck quantiles "
                                                    "(its CDF support); it does not affect the RD loss",
                       **({"warm_started": len(self.warm_started), "init_parts": cfg.init_parts,
                           "init_widen": cfg.init_widen} if self.warm_started else {})})
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
                stop = self.dist.any(self.stop_requested)
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
        prints = self.dist.gather(self.weights_fingerprint())
        if len(set(prints)) != 1:
            raise RuntimeError(f"ranks hold different weights: {prints}")
        cpu, wall = self._spent()
        summary = {"step": self.step, "stopped": False, "rank_fingerprints": prints, "cpu_seconds": round(cpu, 1),
                   "wall_seconds": round(wall, 1)}
        if self.is_main:
            summary.update(self.validate())
            info = export_run(self.run_dir, self.run_dir / EXPORT)  # from the final checkpoint, as lickd export
            summary.update(export=str(info.path), sha256=info.sha256)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self._log({"event": "finished", **{k: v for k, v in summary.items() if k != "rank_fingerprints"}})
        if self.writer is not None:
            self.writer.close()
        return summary

    def close(self) -> None:
        self.dist.close()

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _lambdas(quality: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Each crop's lambda in the loss (variable-rate models; None: the config's one lambda)."""
    return quality_lambda(quality).float() if quality is not None else None
