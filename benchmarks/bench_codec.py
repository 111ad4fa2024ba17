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
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lickd import StudentCodec, zoo
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
    rows = {k: [] for k in ("lickd_enc", "lickd_dec", "lickd_enc_coder", "lickd_dec_coder",
                            "cai_enc", "cai_dec", "cai_enc_coder", "cai_dec_coder", "lickd_bytes", "cai_bytes")}
    for path in images:
        img = load_rgb(path)
        x = pad_to_multiple(to_tensor(img)[0].to(device), 64)
        codec.decompress(codec.compress(img))  # warm-up
        data, t, c = timed(lambda: codec.compress(img), codec.model, device)
        rows["lickd_enc"].append(t), rows["lickd_enc_coder"].append(c), rows["lickd_bytes"].append(len(data))
        _, t, c = timed(lambda: codec.decompress(data), codec.model, device)
        rows["lickd_dec"].append(t), rows["lickd_dec_coder"].append(c)
        enc, t, c = timed(lambda: cai.compress(x), cai, device)
        rows["cai_enc"].append(t), rows["cai_enc_coder"].append(c)
        rows["cai_bytes"].append(sum(len(s[0]) for s in enc["strings"]))
        _, t, c = timed(lambda: cai.decompress(enc["strings"], enc["shape"]), cai, device)
        rows["cai_dec"].append(t), rows["cai_dec_coder"].append(c)

    # Batched: the landscape images together (one network pass per direction).
    same = [load_rgb(p) for p in images]
    same = [im for im in same if im.shape == same[0].shape]
    datas = codec.compress_batch(same)
    _, t_enc, _ = timed(lambda: codec.compress_batch(same), codec.model, device)
    _, t_dec, _ = timed(lambda: codec.decompress_batch(datas), codec.model, device)
    xb = torch.cat([pad_to_multiple(to_tensor(im)[0].to(device), 64) for im in same])
    encb, c_enc, _ = timed(lambda: cai.compress(xb), cai, device)
    _, c_dec, _ = timed(lambda: cai.decompress(encb["strings"], encb["shape"]), cai, device)
    batched = {"batch": len(same), "lickd_enc": t_enc / len(same), "lickd_dec": t_dec / len(same),
               "cai_enc": c_enc / len(same), "cai_dec": c_dec / len(same)}

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"mbt2018-mean N={ours.N} M={ours.M}, {weights_note}; {len(images)} Kodak image(s), batch 1, "
          f"{device.type} ({environment()['gpu'] if device.type == 'cuda' else environment()['cpu']}); medians")
    print(f"{'':24s} {'encode ms':>10s} {'coder %':>8s} {'decode ms':>10s} {'coder %':>8s} {'bytes':>9s}")
    for label, key in (("CompressAI 1.2.8", "cai"), ("lickd", "lickd")):
        e, d = med[f"{key}_enc"], med[f"{key}_dec"]
        print(f"{label:24s} {1e3 * e:10.1f} {100 * med[f'{key}_enc_coder'] / e:7.0f}% {1e3 * d:10.1f} "
              f"{100 * med[f'{key}_dec_coder'] / d:7.0f}% {med[f'{key}_bytes']:9,.0f}")
    print(f"{'speed-up':24s} {med['cai_enc'] / med['lickd_enc']:9.1f}x {'':8s} {med['cai_dec'] / med['lickd_dec']:9.1f}x")
    print(f"batched ({batched['batch']} images), ms per image: CompressAI enc {1e3 * batched['cai_enc']:.1f} / dec "
          f"{1e3 * batched['cai_dec']:.1f}; lickd compress_batch {1e3 * batched['lickd_enc']:.1f} / "
          f"decompress_batch {1e3 * batched['lickd_dec']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device.type, "N": ours.N, "M": ours.M, "weights": weights_note,
                                               "images": [Path(p).name for p in images], "median_s": med, "batched_s": batched,
                                               "per_image_s": rows, "environment": environment()}, indent=2))


if __name__ == "__main__":
    main()
