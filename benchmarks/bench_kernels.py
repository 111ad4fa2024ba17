"""Microbenchmarks of the fused Triton transforms against PyTorch baselines (CUDA GPUs only).

    python benchmarks/bench_kernels.py [--sizes 128x192,64x192] [--batch 1,8] [--quick] [--json out.json]

For each model width (N x M) and batch, per layer and per whole transform (g_a, g_s, h_a, h_s)
of mbt2018-mean at 768x512: CompressAI-style eager fp32 (NCHW, TF32 as PyTorch defaults),
eager bf16 channels-last, torch.compile (default and max-autotune) and lickd fused (bf16: the
fixed launch rule, without split-K, and autotuned per layer shape by lickd.kernels.autotune), with
each one's share of the roofline (FLOPs and bytes printed; peak numbers are arguments). Times
are medians of CUDA-event timings after warm-up (triton.testing.do_bench), inputs rotated
between calls. Also prints the relative L2 error of each variant against a float64 reference.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys

import torch
import torch.nn as nn


def layer_cost(layer: nn.Module, x_shape, y_shape, act: str, dtype_bytes=2):
    """(FLOPs, bytes) of one conv (+GDN) layer: 2 MACs per FLOP, activations read/written once."""
    b, cin, h, w = x_shape
    _, cout, ho, wo = y_shape
    k = layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, nn.ConvTranspose2d):
        flops = 2 * b * h * w * cin * cout * k
    else:
        flops = 2 * b * ho * wo * cin * cout * k
    if act in ("gdn", "igdn"):
        flops += 2 * b * ho * wo * cout * cout
    nbytes = dtype_bytes * (b * cin * h * w + b * cout * ho * wo + layer.weight.numel())
    return flops, nbytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128x192,192x320,64x192,32x192", help="NxM list")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    p.add_argument("--peak-tbps", type=float, default=3.35, help="HBM bandwidth (H100 SXM: 3.35)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--quick", action="store_true", help="one size, batch 1, no compile")
    p.add_argument("--autotune-cache", help="the autotuned variant's cache (default: lickd's, ~/.cache/lickd)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels.py measures CUDA kernels: no CUDA GPU here, nothing measured.")
        return 0
    import triton
    from triton.testing import do_bench

    from lickd import accelerate
    from lickd.kernels.autotune import autotuning
    from lickd.provenance import environment
    from lickd.models import build_model

    if args.quick:
        args.sizes, args.batch, args.no_compile = "128x192", "1", True
    dev = torch.device("cuda")
    rows = []

    def bench(fn, inputs):
        i = [0]

        def call():
            i[0] = (i[0] + 1) % len(inputs)
            return fn(inputs[i[0]])

        return do_bench(call, warmup=25, rep=100, return_mode="median")

    for size in args.sizes.split(","):
        N, M = (int(v) for v in size.split("x"))
        torch.manual_seed(0)
        base = build_model("mbt2018-mean", N, M).eval().to(dev)
        for batch in (int(b) for b in args.batch.split(",")):
            h, w = args.height, args.width
            x_img = [torch.rand(batch, 3, h, w, device=dev) for _ in range(3)]
            with torch.no_grad():
                y = base.g_a(x_img[0])
                z = base.h_a(y)
                inputs = {"g_a": x_img, "g_s": [y + 0.01 * i for i in range(3)],
                          "h_a": [y + 0.01 * i for i in range(3)], "h_s": [z + 0.01 * i for i in range(3)]}
            fused = accelerate(copy.deepcopy(base), dtype=torch.bfloat16, hyper=True)
            unsplit = accelerate(copy.deepcopy(base), dtype=torch.bfloat16, hyper=True)
            for t in ("g_a", "g_s", "h_a", "h_s"):
                getattr(unsplit, t).split_k = False
            variants = {
                "eager fp32 (TF32)": (base, torch.float32, torch.contiguous_format),
                "eager bf16 cl": (copy.deepcopy(base).to(torch.bfloat16), torch.bfloat16, torch.channels_last),
                "lickd fused bf16": (fused, torch.float32, torch.contiguous_format),
                "lickd fused bf16, no split-K": (unsplit, torch.float32, torch.contiguous_format),
                # Same module as "lickd fused bf16", launched with configs measured per layer shape.
                "lickd fused bf16, autotuned": (fused, torch.float32, torch.contiguous_format),
            }
            if not args.no_compile:
                for mode in ("default", "max-autotune"):
                    m = copy.deepcopy(base).to(torch.bfloat16).to(memory_format=torch.channels_last)
                    for t in ("g_a", "g_s", "h_a", "h_s"):
                        setattr(m, t, torch.compile(getattr(m, t), mode=mode))
                    variants[f"compile {mode} bf16 cl"] = (m, torch.bfloat16, torch.channels_last)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            for t in ("g_a", "g_s", "h_a", "h_s"):
                seq = getattr(base, t)
                flops = nbytes = 0
                with torch.no_grad():
                    cur = inputs[t][0]
                    for i, layer in enumerate(seq):
                        out = layer(cur)
                        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                            nxt = seq[i + 1] if i + 1 < len(seq) else None
                            act = "gdn" if nxt is not None and hasattr(nxt, "gamma") else "none"
                            f, b_ = layer_cost(layer, cur.shape, out.shape, act)
                            flops, nbytes = flops + f, nbytes + b_
                        cur = out
                    ref = getattr(copy.deepcopy(base).double(), t)(inputs[t][0].double())
                bound_ms = max(flops / (args.peak_tflops * 1e12), nbytes / (args.peak_tbps * 1e12)) * 1e3
                for name, (model, dtype, fmt) in variants.items():
                    module = getattr(model, t)
                    ins = [i.to(dtype).contiguous(memory_format=fmt) for i in inputs[t]]
                    tuned = autotuning(args.autotune_cache) if name.endswith("autotuned") else contextlib.nullcontext()
                    with torch.no_grad(), tuned:
                        try:
                            out = module(ins[0])
                            err = float((out.double() - ref).norm() / ref.norm())
                            ms = bench(lambda v: module(v), ins)
                        except Exception as e:  # a failing baseline is reported, not fatal
                            rows.append({"N": N, "M": M, "batch": batch, "transform": t, "variant": name,
                                         "error": f"{type(e).__name__}: {e}"[:200]})
                            continue
                    rows.append({"N": N, "M": M, "batch": batch, "transform": t, "variant": name, "ms": ms,
                                 "gflop": flops / 1e9, "mbytes": nbytes / 1e6, "roofline_ms": bound_ms,
                                 "pct_roofline": 100 * bound_ms / ms, "rel_l2_vs_fp64": err})
    env = environment()
    print(f"{env.get('gpu')}, torch {env['torch']}, triton {triton.__version__}, commit {env['commit']}; "
          f"{args.width}x{args.height}; peak {args.peak_tflops} TFLOP/s, {args.peak_tbps} TB/s")
    print(f"{'N x M':8s} {'bs':>3s} {'transform':9s} {'variant':26s} {'ms':>8s} {'% roof':>7s} {'GFLOP':>7s} {'MB':>7s} {'rel err':>8s}")
    for r in rows:
        if "error" in r:
            print(f"{r['N']}x{r['M']:<5d} {r['batch']:3d} {r['transform']:9s} {r['variant']:26s} failed: {r['error']}")
            continue
        print(f"{r['N']}x{r['M']:<5d} {r['batch']:3d} {r['transform']:9s} {r['variant']:26s} {r['ms']:8.3f} "
              f"{r['pct_roofline']:6.1f}% {r['gflop']:7.1f} {r['mbytes']:7.1f} {r['rel_l2_vs_fp64']:8.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "environment": env, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
