"""Ahead-of-time compilation of the fused kernels for a GPU architecture, without a GPU.

``compile_layer`` builds a kernel exactly as the launchers in ``ops`` would launch it (same
constexprs, same number of warps) for, by default, sm_90 (H100/H200), and ``resources`` reads
back what the hardware will be asked for: registers per thread, local-memory stack (spills),
shared memory, and whether the MMAs are Hopper's warpgroup ones (HGMMA) or the older HMMA. A configuration that spills or needs more shared memory than an SM has would be
slow or fail to launch on the GPU; CI checks every layer of the shipped model sizes this way
(tests/test_kernels.py), and ``python -m lickd.kernels.resources [--check]`` prints the table.
Triton's compiler needs ``TRITON_INTERPRET`` unset (the interpreter replaces the kernels).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .conv_act import conv_act_kernel, deconv_act_kernel, splitk_epilogue_kernel
from .ops import gdn_dot_dtype, launch_config

#: Model sizes whose layers CI checks: the teachers (CompressAI's two sizes) and students.
ZOO_SIZES = (("mbt2018-mean", 128, 192), ("mbt2018-mean", 192, 320), ("bmshj2018-hyperprior", 128, 192),
             ("mbt2018-mean", 64, 192), ("mbt2018-mean", 32, 96), ("mbt2018-mean", 48, 112))
#: Shared memory one thread block may use on sm_80 / sm_90 (opt-in maximum).
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}
_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Resources:
    registers: int
    stack_bytes: int  # local memory per thread: spills (and dynamic indexing)
    shared_bytes: int
    num_warps: int
    wgmma: int  # HGMMA instructions (Hopper's warpgroup MMA; 0 = the older, slower HMMA path)
    mma: int  # HMMA instructions


def compile_layer(transposed: bool, cout: int, act: str, dtype: torch.dtype, ks: int = 5, stride: int = 2,
                  pad: int = 2, arch: int = 90, block_m: int | None = None, warps: int | None = None,
                  part: str = "single"):
    """The compiled kernel the launcher would run for this layer (input width does not change it):
    ``part`` "single" (one pass), "slices" (split-K first pass) or "epilogue" (split-K second
    pass); ``block_m``/``warps`` override the launcher's choice (to explore others)."""
    t = _TRITON_DTYPES[dtype]
    gamma_t = _TRITON_DTYPES[gdn_dot_dtype(dtype)]  # as pack_gdn stores it
    constexprs, chosen_warps = launch_config(cout, act, dtype, transposed)
    constexprs["UPCAST"] = False  # the GPU path
    if block_m:
        constexprs["BLOCK_M"] = block_m
    if part == "epilogue":
        del constexprs["BLOCK_K"]
        signature = {"ws_ptr": "*fp32", "bias_ptr": "*fp32", "gamma_t_ptr": f"*{gamma_t}", "beta_ptr": "*fp32",
                     "y_ptr": f"*{t}", "M_OUT": "i32", "COUT": "i32", "SPLITS": "i32"}
        kernel = splitk_epilogue_kernel
    else:
        signature = {"x_ptr": f"*{t}", "w_ptr": f"*{t}", "bias_ptr": "*fp32", "gamma_t_ptr": f"*{gamma_t}",
                     "beta_ptr": "*fp32", "y_ptr": f"*{t}", "ws_ptr": "*fp32", "H": "i32", "W": "i32"}
        if not transposed:
            signature.update({"HO": "i32", "WO": "i32"})
        signature.update({"M": "i32", "CIN": "i32", "COUT": "i32", "K_SPLIT": "i32"})
        constexprs["SPLIT"] = part == "slices"
        if not transposed:
            constexprs = {"KS": ks, "STRIDE": stride, "PAD": pad, **constexprs}
        kernel = deconv_act_kernel if transposed else conv_act_kernel
    signature.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps or chosen_warps})


def cuobjdump() -> str | None:
    """Triton's bundled cuobjdump (None when this Triton has no NVIDIA backend binaries)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return tool if os.access(tool, os.X_OK) else None


def resources(compiled) -> Resources:
    """Registers, stack and the MMA instructions from the cubin (Triton's bundled cuobjdump),
    shared memory from Triton."""
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("Triton's NVIDIA backend has no cuobjdump here")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if m is None:
        raise RuntimeError(f"unexpected cuobjdump output: {text[-300:]}")
    return Resources(int(m.group(1)), int(m.group(2)), int(compiled.metadata.shared),
                     int(compiled.metadata.num_warps), len(re.findall(r"\bHGMMA\b", sass)),
                     len(re.findall(r"\bHMMA\b", sass)))


def model_layers(architecture: str, N: int, M: int, dtype: torch.dtype) -> list[tuple[str, bool, int, str, int, int, int]]:
    """(name, transposed, cout, act, ks, stride, pad) of every layer FusedSequential fuses, at
    ``dtype``, in the model's g_a, g_s, h_a and h_s."""
    from ..models import build_model
    from .modules import FusedSequential

    model = build_model(architecture, N, M)
    out = []
    for name in ("g_a", "g_s", "h_a", "h_s"):
        seq = getattr(model, name, None)
        if seq is None:
            continue
        fused = FusedSequential.from_sequential(seq, dtype=dtype)
        layers = list(fused)
        for step in fused.plan():
            if step[0] != "fused":
                continue
            _, i, _, act, (transposed, stride, pad) = step
            conv = layers[i]
            out.append((f"{name}.{i}", transposed, conv.out_channels, act, conv.kernel_size[0], stride, pad))
    return out


def _key_resources(key: tuple, arch: int) -> Resources:
    transposed, cout, act, dtype, ks, stride, pad, part = key
    try:
        return resources(compile_layer(transposed, cout, act, dtype, ks, stride, pad, arch, part=part))
    except Exception as e:  # a worker's own exception may not pickle back: the layer and the traceback do
        import traceback
        raise RuntimeError(f"layer {key}: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def default_jobs() -> int:
    """The CPUs this process may use (its affinity, not the host's count), at most 8: each worker
    holds its own torch and Triton."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _compile_all(keys: list[tuple], arch: int, jobs: int) -> dict[tuple, Resources]:
    """Resources of every distinct kernel. Compiling (Triton's passes, ptxas) and reading the cubin
    back are single-threaded work per kernel, so with ``jobs`` > 1 the kernels compile in that many
    fresh processes (spawned: no forked compiler state), each its own share of the keys."""
    if jobs <= 1 or len(keys) <= 1:
        return {key: _key_resources(key, arch) for key in keys}
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=min(jobs, len(keys)), mp_context=get_context("spawn")) as pool:
        return dict(zip(keys, pool.map(_key_resources, keys, [arch] * len(keys))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Registers, spills and shared memory of every fused layer, per GPU arch")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--sizes", default=",".join(f"{a}:{n}:{m}" for a, n, m in ZOO_SIZES))
    p.add_argument("--check", action="store_true", help="exit 1 when a fused layer spills or overflows shared memory")
    p.add_argument("--split", action="store_true", help="also the split-K passes of the 16-bit layers (for small layers)")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="kernels compiled at once (default: the CPUs, at most 8)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    if cuobjdump() is None:
        print("cannot check: Triton's NVIDIA backend has no cuobjdump here")
        return 3
    limit = MAX_SHARED.get(args.arch, 0)
    print(f"sm_{args.arch}, Triton {triton.__version__}; shared memory limit {limit // 1024} KB")
    print(f"{'model':30s} {'layer':6s} {'kind':7s} {'Cout':>5s} {'act':10s} {'dtype':8s} {'warps':>5s} "
          f"{'regs':>5s} {'spill B':>8s} {'smem KB':>8s} {'MMA':>6s}")
    rows = []  # (model size, layer name, key): every fused layer, in the order printed
    for size in args.sizes.split(","):
        arch, n, m = size.split(":")
        for dtype in (torch.bfloat16, torch.float32):
            parts = ("single", "slices", "epilogue") if args.split and dtype != torch.float32 else ("single",)
            for name, transposed, cout, act, ks, stride, pad in model_layers(arch, int(n), int(m), dtype):
                rows += [(size, name, (transposed, cout, act, dtype, ks, stride, pad, part)) for part in parts]
    seen = _compile_all(list(dict.fromkeys(key for _, _, key in rows)), args.arch, args.jobs)
    bad = 0
    for size, name, key in rows:
        transposed, cout, act, dtype, ks, stride, pad, part = key
        r = seen[key]
        flag = r.stack_bytes > 0 or r.shared_bytes > limit
        bad += flag
        kind = "deconv" if transposed else f"conv{ks}s{stride}"
        label = name if part == "single" else f"{name} {part}"
        print(f"{size:30s} {label:6s} {kind:7s} {cout:5d} {act:10s} {str(dtype)[6:]:8s} {r.num_warps:5d} "
              f"{r.registers:5d} {r.stack_bytes:8d} {r.shared_bytes / 1024:8.1f} "
              f"{'wgmma' if r.wgmma else 'mma':>6s}{'  <-- spills or too much shared memory' if flag else ''}")
    wgmma = sum(1 for r in seen.values() if r.wgmma)
    print(f"{len(seen)} distinct kernels ({wgmma} on Hopper's warpgroup MMA), {bad} layer(s) over the limits")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
