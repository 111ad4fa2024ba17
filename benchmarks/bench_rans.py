"""Entropy-coder throughput and rate: lickd's rANS against CompressAI's on the same symbols.

    python benchmarks/bench_rans.py [--quick] [--weights FILE --image IMG] [--json out.json]
    python benchmarks/bench_rans.py --weights FILE --files DIR [--json out.json]

--files: the rate overhead of whole .lkd files over a folder of images (bytes of the files and of
their streams against the ideal code length of y and z under the model's own tables), no timing.

Workload: the latent y of a trained model on a Kodak image when --weights is given (real
symbols, indexes and CDFs); otherwise a synthetic Gaussian-scale workload shaped like
mbt2018-mean's y on a 768x512 image (320 x 32 x 48 symbols, scales log-uniform in [0.11, 8],
CompressAI's 64-entry scale table), which is what the table says. Both coders get the same
symbols, indexes and tables; CompressAI's times include its list conversions, as its API
requires them. lickd codes bare streams, as .lkd files hold them (csrc/rans_format.h). Overhead
is the stream size against the ideal code length -sum log2 p of the symbols under each coder's own
quantised tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from lickd.entropy import GaussianConditional, get_scale_table, stream_info
from lickd.entropy.options import LKD_FILE_OPTIONS
from lickd.provenance import environment


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ideal_bytes(cdf: torch.Tensor, offset: torch.Tensor, cdf_length: torch.Tensor, symbols, indexes, precision):
    """-sum log2 p / 8 under quantised tables (escapes counted at the escape symbol's probability)."""
    idx = indexes.long()
    value = symbols.long() - offset.long()[idx]
    esc = (cdf_length.long() - 2)[idx]
    s = torch.where((value < 0) | (value >= esc), esc, value)
    freq = cdf.long()[idx, s + 1] - cdf.long()[idx, s]
    return float((precision - torch.log2(freq.double())).sum()) / 8


def synthetic_workload(n_channels, height, width, scale_max=8.0, seed=0):
    rng = np.random.default_rng(seed)
    n = n_channels * height * width
    scales = torch.from_numpy(np.exp(rng.uniform(math.log(0.11), math.log(scale_max), n))).float()
    symbols = torch.round(torch.from_numpy(rng.normal(size=n)).float() * scales).int()
    return symbols, scales, (f"synthetic Gaussian-scale latent, scales log-uniform in [0.11, {scale_max:g}] "
                             "(no trained weights given)")


def coded_latents(model, x):
    """What the codec codes for image x: y's symbols and scales, z's symbols (exact entropy
    parameters, as .lkd files code them)."""
    eb = model.entropy_bottleneck
    with torch.inference_mode():
        y = model.g_a(x)
        z = model._hyper_analysis(y)
        medians = eb.expanded_medians(z.size(0), 2)
        scales, means = model._coding_params(eb.quantize(z, "dequantize", medians), LKD_FILE_OPTIONS)
        return model.gaussian_conditional.quantize(y, "symbols", means), scales, eb.quantize(z, "symbols", medians)


def model_workload(weights, image):
    from lickd import StudentCodec
    from lickd.image import load_rgb, pad_to_multiple, to_tensor

    codec = StudentCodec.from_file(weights, device="cpu")
    x = pad_to_multiple(to_tensor(load_rgb(image))[0], codec.model.downsampling_factor)
    symbols, scales, _ = coded_latents(codec.model, x)
    return symbols.reshape(-1), scales.reshape(-1), f"y of {codec.name} on {os.path.basename(image)}"


def file_overhead(weights, directory):
    """Per image: .lkd file bytes, stream bytes and the ideal -sum log2 p of y and z (the
    model's own tables, the exact entropy parameters the codec uses)."""
    from lickd import StudentCodec
    from lickd.container import parse
    from lickd.image import list_images, load_rgb, pad_to_multiple, to_tensor

    codec = StudentCodec.from_file(weights, device="cpu")
    model = codec.model
    if not hasattr(model, "gaussian_conditional"):
        raise SystemExit("--files needs a hyperprior model (y and z streams)")
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    rows = []
    for path in list_images(directory):
        name = os.path.basename(path)
        image = load_rgb(path)
        data = codec.compress(image)
        y_sym, scales, z_sym = coded_latents(model, pad_to_multiple(to_tensor(image)[0], model.downsampling_factor))
        z_idx = eb._build_indexes(z_sym.size(), z_sym.device)
        ideal = (ideal_bytes(gc._quantized_cdf, gc._offset, gc._cdf_length, y_sym.reshape(-1),
                             gc.build_indexes(scales).reshape(-1), gc.table_precision())
                 + ideal_bytes(eb._quantized_cdf, eb._offset, eb._cdf_length, z_sym.reshape(-1), z_idx.reshape(-1),
                               eb.table_precision()))
        rows.append({"image": name, "pixels": image.shape[0] * image.shape[1], "file_bytes": len(data),
                     "stream_bytes": parse(data).payload_bytes(), "ideal_bytes": ideal})
    return codec.name, rows


def print_file_overhead(name, rows):
    print(f"{name}: whole .lkd files vs the ideal code length of y and z")
    print(f"{'image':14s} {'bpp':>7s} {'file B':>8s} {'ideal B':>10s} {'streams':>9s} {'file':>9s}")
    for r in rows + [{"image": "all", **{k: sum(r[k] for r in rows) for k in
                                         ("pixels", "file_bytes", "stream_bytes", "ideal_bytes")}}]:
        print(f"{r['image']:14s} {8 * r['file_bytes'] / r['pixels']:7.4f} {r['file_bytes']:8,d} "
              f"{r['ideal_bytes']:10,.1f} {100 * (r['stream_bytes'] / r['ideal_bytes'] - 1):+8.3f}% "
              f"{100 * (r['file_bytes'] / r['ideal_bytes'] - 1):+8.3f}%")


def cuda_rows(tables, symbols, indexes, ideal, repeats):
    """lickd's CUDA coder on one stream and on a batch of 64 (symbols already on the GPU; times
    include the bytes' copy to or from the host, as the API returns and takes host bytes)."""
    from lickd.entropy.coder import cuda_coder_built
    if not (cuda_coder_built() and torch.cuda.is_available()):
        return [{"coder": "lickd CUDA", "note": "not measured: no CUDA coder in this build / no GPU here"}]
    n = symbols.numel()
    cpu_bytes = tables.encode(symbols, indexes, bare=True)
    rows = []
    for batch in (1, 64):
        sym = [symbols.cuda() for _ in range(batch)]
        idx = [indexes.cuda() for _ in range(batch)]
        streams = tables.encode_cuda(sym, idx, bare=True)
        assert all(s == cpu_bytes for s in streams), "CUDA and CPU streams differ"
        assert all(torch.equal(o.cpu(), symbols) for o in tables.decode_cuda(streams, idx, bare=True))
        t_enc = timeit(lambda: tables.encode_cuda(sym, idx, bare=True), repeats)
        t_dec = timeit(lambda: (tables.decode_cuda(streams, idx, bare=True), torch.cuda.synchronize()), repeats)
        info = stream_info(cpu_bytes, bare_symbols=n)
        rows.append({"coder": f"lickd CUDA, batch {batch}", "encode_msym_s": batch * n / t_enc / 1e6,
                     "decode_msym_s": batch * n / t_dec / 1e6, "bytes": len(cpu_bytes), "ideal_bytes": ideal,
                     "overhead_pct": 100 * (len(cpu_bytes) / ideal - 1),
                     "layout": f"{info['n_chunks']} chunk(s) x {info['lanes']} lanes per stream, P=15",
                     "device": torch.cuda.get_device_name()})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small workload, few repeats (CI-sized)")
    p.add_argument("--weights", help="trained lickd weights: code the real y of --image")
    p.add_argument("--image", default="../shared/data/kodak/kodim23.png")
    p.add_argument("--files", metavar="DIR",
                   help="with --weights: rate overhead of whole .lkd files over the images in DIR (no timing)")
    p.add_argument("--scale-max", type=float, default=8.0,
                   help="synthetic workload: largest scale (0.3 mimics a low-rate y of a few KB)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    if args.files:
        if not args.weights:
            p.error("--files needs --weights")
        name, rows = file_overhead(args.weights, args.files)
        print_file_overhead(name, rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": name, "files": rows, "environment": environment()}, f, indent=2)
        return 0

    if args.weights:
        symbols, scales, workload = model_workload(args.weights, args.image)
    else:
        symbols, scales, workload = synthetic_workload(*((64, 16, 24) if args.quick else (320, 32, 48)),
                                                       scale_max=args.scale_max)
    n = symbols.numel()
    rows = []

    # lickd: P = 15 tables built by our quantiser.
    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    indexes = gc.build_indexes(scales)
    tables = gc.tables
    ideal = ideal_bytes(gc._quantized_cdf, gc._offset, gc._cdf_length, symbols, indexes, 15)
    threads = os.cpu_count() or 1
    for label, kw in (("lickd CPU, 1 thread", {"threads": 1, "bare": True}),
                      (f"lickd CPU, {threads} threads", {"threads": threads, "bare": True})):
        data = tables.encode(symbols, indexes, **kw)
        assert torch.equal(tables.decode(data, indexes, **kw), symbols)
        t_enc = timeit(lambda: tables.encode(symbols, indexes, **kw), repeats)
        t_dec = timeit(lambda: tables.decode(data, indexes, **kw), repeats)
        info = stream_info(data, bare_symbols=n)
        rows.append({"coder": label, "encode_msym_s": n / t_enc / 1e6, "decode_msym_s": n / t_dec / 1e6,
                     "bytes": len(data), "ideal_bytes": ideal, "overhead_pct": 100 * (len(data) / ideal - 1),
                     "layout": f"{info['n_chunks']} chunk(s) x {info['lanes']} lanes, P=15"})

    # CompressAI on the same symbols with its own (P = 16) tables.
    try:
        from compressai.ans import RansDecoder, RansEncoder
        from compressai.entropy_models import GaussianConditional as CaiGC
        from compressai.models.base import get_scale_table as cai_scales

        cai = CaiGC(None)
        cai.update_scale_table(cai_scales())
        cai_idx = cai.build_indexes(scales)
        assert torch.equal(cai_idx, indexes)
        cdf, lengths, offsets = cai._quantized_cdf, cai._cdf_length, cai._offset

        def cai_encode():
            return RansEncoder().encode_with_indexes(symbols.tolist(), cai_idx.int().tolist(), cdf.tolist(),
                                                     lengths.tolist(), offsets.tolist())

        blob = cai_encode()

        def cai_decode():
            return RansDecoder().decode_with_indexes(blob, cai_idx.int().tolist(), cdf.tolist(), lengths.tolist(),
                                                     offsets.tolist())

        assert cai_decode() == symbols.tolist()
        cai_ideal = ideal_bytes(cdf, offsets, lengths, symbols, indexes, 16)
        rows.insert(0, {"coder": "CompressAI 1.2.8 RansEncoder/Decoder", "encode_msym_s": n / timeit(cai_encode, repeats) / 1e6,
                        "decode_msym_s": n / timeit(cai_decode, repeats) / 1e6, "bytes": len(blob),
                        "ideal_bytes": cai_ideal, "overhead_pct": 100 * (len(blob) / cai_ideal - 1),
                        "layout": "1 stream, rans64, P=16"})
    except ImportError:
        rows.insert(0, {"coder": "CompressAI (not installed)"})

    rows += cuda_rows(tables, symbols, indexes, ideal, repeats)
    print(f"workload: {workload}, {n:,} symbols; median of {repeats}; {platform.processor() or platform.machine()}")
    print(f"{'coder':40s} {'enc Msym/s':>11s} {'dec Msym/s':>11s} {'bytes':>9s} {'overhead':>9s}  layout")
    for r in rows:
        if "encode_msym_s" not in r:
            print(f"{r['coder']:40s} {r.get('note', '')}")
            continue
        print(f"{r['coder']:40s} {r['encode_msym_s']:11.1f} {r['decode_msym_s']:11.1f} {r['bytes']:9,d} "
              f"{r['overhead_pct']:+8.3f}%  {r['layout']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": workload, "n_symbols": n, "repeats": repeats, "rows": rows,
                       "environment": environment()}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
