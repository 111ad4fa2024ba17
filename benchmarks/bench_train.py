"""Training throughput: steps/s and how busy the GPU is, for a teacher and a student.

    python benchmarks/bench_train.py [--quick] [--data DIR] [--variants fp32,bf16,bf16-nhwc,bf16-fused] [--json out.json]

Each row builds lickd's Trainer (the real training step: forward, RD or distillation loss, aux
loss, one backward, clipping, both optimisers) on crops from --data (default
../shared/data/train, decoded once into memory on the training device) and times ``--steps``
steps after ``--warmup`` steps, synchronised at both ends. Rows: teacher mbt2018-mean N=128/M=192
and student N=64/M=192 (plain, and distilled from a same-size random teacher: the KD step's extra
teacher forward is what costs), at batch 16 and 256x256 crops (--quick: tiny sizes for CPUs).
Variants: fp32, bf16 autocast (``amp``), the same with channels_last weights and crops (``nhwc``), bf16
autocast + fused Triton kernels (``fused``; GPU only).
On NVIDIA GPUs "GPU busy" is NVML's utilisation (the share of time a kernel was running) averaged
over the timed steps: the issue's target is >= 80 %.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lickd import zoo
from lickd.device import synchronize
from lickd.eval.bench import BusySampler
from lickd.models import build_model
from lickd.provenance import environment
from lickd.train.config import load_config
from lickd.train.engine import Trainer

VARIANTS = {"fp32": ["amp=false", "fused=false"], "bf16": ["amp=true", "fused=false"],
            "bf16-nhwc": ["amp=true", "fused=false", "channels_last=true"],
            "bf16-fused": ["amp=true", "fused=true"]}


def build(overrides, run_dir):
    cfg = load_config(None, [*overrides, f"run_dir={run_dir}", "tensorboard=false", "val_every=0",
                             "log_every=1000000000", "ckpt_every=1000000000"])
    return Trainer(cfg, progress=False)


def measure(trainer, warmup, steps):
    device = trainer.device
    for _ in range(warmup):
        trainer.train_step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with BusySampler(device) as busy:
        t_all = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            stats = trainer.train_step()
            if device.type != "cuda":
                times.append(time.perf_counter() - t0)
        synchronize(device)
        elapsed = time.perf_counter() - t_all
    loss = float(stats["loss"])
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError("non-finite loss during the benchmark")
    return {"steps_per_s": steps / elapsed, "ms_per_step": 1e3 * elapsed / steps,
            "images_per_s": steps * trainer.cfg.batch_size / elapsed,
            "gpu_busy_pct": busy.mean, "busy_note": busy.nvml.reason or "NVML utilisation, mean over the timed steps",
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "step_ms_spread": (1e3 * min(times), 1e3 * statistics.median(times), 1e3 * max(times)) if times else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models and crops, 2 timed steps (CPU-sized)")
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--variants", default=None, help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--patch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    batch = args.batch or (2 if args.quick else 16)
    patch = args.patch or (64 if args.quick else 256)
    steps = args.steps or (2 if args.quick else 50)
    warmup = args.warmup or (1 if args.quick else 10)
    variants = (args.variants or ("fp32,bf16,bf16-nhwc,bf16-fused" if cuda else "fp32,bf16,bf16-nhwc")).split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")
        if "fused=true" in VARIANTS[v] and not cuda:
            p.error("the fused variant needs a GPU")
    teacher_nm, student_nm = ((16, 24), (8, 24)) if args.quick else ((128, 192), (64, 192))
    base = [f"data={args.data}", f"batch_size={batch}", f"patch_size={patch}", "architecture=mbt2018-mean",
            "lmbda=0.0130", f"steps={warmup + steps + 1}"]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # A same-size random teacher for the distillation row: its cost is that of a trained one.
        teacher_file = Path(tmp) / "teacher.safetensors"
        torch.manual_seed(0)
        teacher = build_model("mbt2018-mean", *teacher_nm)
        teacher.update(force=True)
        zoo.save_weights(teacher, teacher_file, zoo.ModelInfo(name="bench-teacher", architecture="mbt2018-mean",
                                                              N=teacher_nm[0], M=teacher_nm[1]))
        jobs = [("teacher", teacher_nm, []), ("student", student_nm, []),
                ("student + KD", student_nm, [f"kd.teacher={teacher_file}"])]
        for variant in variants:
            for role, (n, m), extra in jobs:
                trainer = build([*base, f"N={n}", f"M={m}", *VARIANTS[variant], *extra], Path(tmp) / "run")
                try:
                    r = measure(trainer, warmup, steps)
                finally:
                    trainer.close()
                rows.append({"model": f"{role} N={n} M={m}", "variant": variant, "batch": batch, "patch": patch,
                             "device": str(trainer.device), **r})
                del trainer
                if cuda:
                    torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"training step, mbt2018-mean, batch {batch}, {patch}x{patch} crops, {steps} timed steps after "
          f"{warmup} warm-up; {device_name}")
    print(f"{'model':24s} {'variant':11s} {'steps/s':>8s} {'ms/step':>8s} {'img/s':>7s} {'GPU busy':>9s} {'peak MB':>8s}")
    for r in rows:
        busy = f"{r['gpu_busy_pct']:.0f} %" if r["gpu_busy_pct"] is not None else "n/a"
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "n/a"
        print(f"{r['model']:24s} {r['variant']:11s} {r['steps_per_s']:8.2f} {r['ms_per_step']:8.1f} "
              f"{r['images_per_s']:7.1f} {busy:>9s} {mem:>8s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "device": device_name, "steps": steps, "warmup": warmup,
                       "environment": environment()}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
