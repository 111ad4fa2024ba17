"""End-to-end codec time per image: lickd against CompressAI on the same architecture and weights.

    python benchmarks/bench_codec.py [--kodak DIR] [--limit N] [--N 64 --M 192] [--device cpu|cuda] [--json out.json]

Both sides code the same padded image with the same weights (a CompressAI mbt2018-mean model,
randomly initialised unless --weights gives a lickd file; trained weights change the bytes, not
the pipeline). lickd's time covers the whole file path (padding, container, checks); CompressAI's
is its model.compress / model.decompress. The coder share is what is left after the transforms
(g_a, h_a, h_s, g_s), timed by synchronised forward hooks. Batch 1 (medians over images), then
the same-size images as one batch (time per image).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from lickd import StudentCodec, zoo
from lickd.entropy.coder import cuda_coder_built
from lickd.eval.bench import stage_timer, synchronize
from lickd.image import list_images
from lickd.eval.runner import load_rgb
from lickd.provenance import environment
from lickd.image import pad_to_multiple, to_tensor
from lickd.models import MeanScaleHyperprior


def timed(fn, model, device):
    def sync():
        synchronize(device)

    with stage_timer(model, sync) as stages:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        total = time.perf_counter() - t0
    return out, total, total - sum(stages.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kodak", default="../shared/data/kodak")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--N", type=int, default=128)
    p.add_argument("--M", type=int, default=192)
    p.add_argument("--weights", help="lickd weights (mbt2018-mean) instead of random ones")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_grad_enabled(False)

    if args.weights:
        ours, info = zoo.load_weights(args.weights)
        weights_note = f"weights {info.name}@{info.short_hash}"
    else:
        torch.manual_seed(0)
        ours = MeanScaleHyperprior(args.N, args.M).eval()
        ours.update()
        info = zoo.ModelInfo(name="random-init", architecture="mbt2018-mean", N=args.N, M=args.M)
        weights_note = "random-init weights (no trained model yet)"
    codec = StudentCodec(ours, info, device=device)
    try:
        from compressai.models import MeanScaleHyperprior as CaiMeanScale
    except ImportError:
        sys.exit("CompressAI is needed for the comparison: pip install compressai")
    cai = CaiMeanScale(ours.N, ours.M).eval()
    cai.load_state_dict({k: v for k, v in ours.state_dict().items()}, strict=False)
    cai.update(force=True)
    cai.to(device)

    images = list_images(args.kodak)[: args.limit]
    loaded = [load_rgb(p) for p in images]
    same = [im for im in loaded if im.shape == loaded[0].shape]  # batched: the landscape images together
    variants = [("lickd", "0", False)]
    if device.type == "cuda" and cuda_coder_built():
        variants += [("lickd + CUDA coder", "1", False), ("lickd + CUDA coder + fused fp16", "1", True)]
    previous = os.environ.get("LICKD_CUDA_CODER")
    try:
        results = {label: lickd_rows(codec, loaded, same, device, cuda_coder, fused)
                   for label, cuda_coder, fused in variants}
    finally:  # the caller's choice of coder again
        os.environ.pop("LICKD_CUDA_CODER", None)
        if previous is not None:
            os.environ["LICKD_CUDA_CODER"] = previous

    rows = {k: [] for k in ("cai_enc", "cai_dec", "cai_enc_coder", "cai_dec_coder", "cai_bytes")}
    for img in loaded:
        x = pad_to_multiple(to_tensor(img)[0].to(device), 64)
        enc, t, c = timed(lambda: cai.compress(x), cai, device)
        rows["cai_enc"].append(t), rows["cai_enc_coder"].append(c)
        rows["cai_bytes"].append(sum(len(s[0]) for s in enc["strings"]))
        _, t, c = timed(lambda: cai.decompress(enc["strings"], enc["shape"]), cai, device)
        rows["cai_dec"].append(t), rows["cai_dec_coder"].append(c)
    xb = torch.cat([pad_to_multiple(to_tensor(im)[0].to(device), 64) for im in same])
    encb, c_enc, _ = timed(lambda: cai.compress(xb), cai, device)
    _, c_dec, _ = timed(lambda: cai.decompress(encb["strings"], encb["shape"]), cai, device)
    cai_batched = {"enc": c_enc / len(same), "dec": c_dec / len(same)}

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"mbt2018-mean N={ours.N} M={ours.M}, {weights_note}; {len(images)} Kodak image(s), batch 1, "
          f"{device.type} ({environment()['gpu'] if device.type == 'cuda' else environment()['cpu']}); medians")
    print(f"{'':28s} {'encode ms':>10s} {'coder %':>8s} {'decode ms':>10s} {'coder %':>8s} {'bytes':>9s} "
          f"{'speed-up enc/dec':>17s} {'batch ' + str(len(same)) + ' ms/img enc/dec':>24s}")
    print(f"{'CompressAI 1.2.8':28s} {1e3 * med['cai_enc']:10.1f} {100 * med['cai_enc_coder'] / med['cai_enc']:7.0f}% "
          f"{1e3 * med['cai_dec']:10.1f} {100 * med['cai_dec_coder'] / med['cai_dec']:7.0f}% {med['cai_bytes']:9,.0f} "
          f"{'':>17s} {1e3 * cai_batched['enc']:11.2f} / {1e3 * cai_batched['dec']:<10.2f}")
    for label, r in results.items():
        e, d = r["median_s"]["enc"], r["median_s"]["dec"]
        speed = f"{med['cai_enc'] / e:.1f}x / {med['cai_dec'] / d:.1f}x"
        print(f"{label:28s} {1e3 * e:10.1f} {100 * r['median_s']['enc_coder'] / e:7.0f}% {1e3 * d:10.1f} "
              f"{100 * r['median_s']['dec_coder'] / d:7.0f}% {r['median_s']['bytes']:9,.0f} {speed:>17s} "
              f"{1e3 * r['batched_s']['enc']:11.2f} / {1e3 * r['batched_s']['dec']:<10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device.type, "N": ours.N, "M": ours.M, "weights": weights_note,
                                               "images": [Path(p).name for p in images], "compressai": {
                                                   "median_s": med, "batched_s": cai_batched, "per_image_s": rows},
                                               "lickd": results, "batch": len(same), "environment": environment()},
                                              indent=2))


def lickd_rows(codec, images, same, device, cuda_coder: str, fused: bool) -> dict:
    """Batch-1 medians and batched time per image of one lickd configuration (the CUDA coder is
    switched by LICKD_CUDA_CODER, the fused kernels by lickd.accelerate on a copy of the model, in
    fp16: as fast as bf16 on tensor cores and 10x closer to the reference on Kodak, see README)."""
    os.environ["LICKD_CUDA_CODER"] = cuda_coder
    if fused:
        from lickd import accelerate
        codec = StudentCodec(accelerate(copy.deepcopy(codec.model), dtype=torch.float16), codec.info, device=device)
    rows = {k: [] for k in ("enc", "dec", "enc_coder", "dec_coder", "bytes")}
    for img in images:
        codec.decompress(codec.compress(img))  # warm-up
        data, t, c = timed(lambda: codec.compress(img), codec.model, device)
        rows["enc"].append(t), rows["enc_coder"].append(c), rows["bytes"].append(len(data))
        _, t, c = timed(lambda: codec.decompress(data), codec.model, device)
        rows["dec"].append(t), rows["dec_coder"].append(c)
    datas = codec.compress_batch(same)
    _, t_enc, _ = timed(lambda: codec.compress_batch(same), codec.model, device)
    _, t_dec, _ = timed(lambda: codec.decompress_batch(datas), codec.model, device)
    return {"median_s": {k: statistics.median(v) for k, v in rows.items()}, "per_image_s": rows,
            "batched_s": {"enc": t_enc / len(same), "dec": t_dec / len(same)}}


if __name__ == "__main__":
    main()
