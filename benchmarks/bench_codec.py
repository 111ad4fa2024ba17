"""End-to-end codec time per image: lickd against CompressAI on the same architecture and weights.

    python benchmarks/bench_codec.py [--kodak DIR] [--limit N] [--model NAME | --weights FILE | --N 64 --M 192]
                                     [--device cpu|cuda] [--json out.json]
    python benchmarks/bench_codec.py --memory [--sizes 1,12,24] [--tile auto|0|PIXELS] [--json out.json]

Both sides code the same padded image with the same weights: a shipped model (``--model``), a
lickd weights file (``--weights``) or a random-init mbt2018-mean (trained weights change the
bytes, not the pipeline), in CompressAI's class of the same architecture (mbt2018-mean:
MeanScaleHyperprior, bmshj2018-hyperprior: ScaleHyperprior; a variable-rate model's transforms
without its gain units, the same work but two multiplications). The work line gives each side's
multiply-accumulates per image, the rate they run at over the whole time, and that rate as a
fraction of the CPU's nominal fp32 peak (lickd.cpu.fp32_peak_gmacs). lickd's time covers the whole file path (padding, container, checks); CompressAI's
is its model.compress / model.decompress. The coder share is what is left after the transforms
(g_a, h_a, h_s, g_s), timed by synchronised forward hooks. Batch 1 (medians over images), then
the same-size images as one batch (time per image).

``--memory``: peak RSS of one encode and one decode of a synthetic photo-like image at each size
(megapixels, 3:4), each in a fresh subprocess (``ru_maxrss``, so imports and model count: the
"idle" column is that floor), with the MP/s of both; N=64/M=192 mbt2018-mean by default.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import torch

from lickd import StudentCodec, zoo
from lickd.device import resolve_device, synchronize
from lickd.entropy.coder import cuda_coder_built
from lickd.entropy.models import EXPORT_SCALES_LEVELS, get_scale_table
from lickd.eval.bench import fast_path, stage_timer
from lickd.image import list_images, load_rgb, pad_to_multiple, to_tensor
from lickd.provenance import environment
from lickd.models import MeanScaleHyperprior


def timed(fn, model, device, stages_out=None):
    """(fn's result, its wall time, the part outside the transforms: the coder); ``stages_out``
    collects each transform's time (h_s: the exact one for lickd, CompressAI's float one)."""
    def sync():
        synchronize(device)

    with stage_timer(model, sync) as stages:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        total = time.perf_counter() - t0
    if stages_out is not None:
        for name, t in stages.items():
            stages_out.setdefault(name, []).append(t)
    return out, total, total - sum(stages.values())


def stage_medians_ms(stages: dict) -> dict:
    return {name: 1e3 * statistics.median(v) for name, v in stages.items()}


def stage_text(ms: dict, names) -> str:
    return " ".join(f"{n} {ms[n]:.0f}" for n in names if n in ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kodak", default="../shared/data/kodak")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--N", type=int, help="default 128 (64 with --memory)")
    p.add_argument("--M", type=int, default=192)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", help="a lickd weights file (mbt2018-mean or bmshj2018-hyperprior, -vr too)")
    which.add_argument("--model", help="a shipped model by name (lickd models)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json")
    p.add_argument("--memory", action="store_true", help="peak RSS and MP/s of large images instead")
    p.add_argument("--sizes", default="1,12,24", help="--memory: megapixels, comma-separated")
    p.add_argument("--tile", default="auto", help="--memory: StudentCodec's tile (auto, 0: none, or pixels)")
    p.add_argument("--child", nargs=3, metavar=("STAGE", "MP", "FILE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.weights or args.model) and args.N:
        p.error("--N sets the width of random-init weights only")
    device = resolve_device(args.device)
    torch.set_grad_enabled(False)
    if args.child:
        return memory_child(args, device, *args.child)
    if args.memory:
        return memory_main(args, argv)

    codec, weights_note = make_codec(args, device, 128)
    ours = codec.model
    try:
        from compressai import models as cai_models
    except ImportError:
        sys.exit("CompressAI is needed for the comparison: pip install compressai")
    base = ours.architecture.removesuffix("-vr")
    cai_class = {"mbt2018-mean": "MeanScaleHyperprior", "bmshj2018-hyperprior": "ScaleHyperprior"}.get(base)
    if cai_class is None:
        sys.exit(f"no CompressAI counterpart is compared for {ours.architecture}")
    cai = getattr(cai_models, cai_class)(ours.N, ours.M).eval()
    keys = cai.load_state_dict(ours.state_dict(), strict=False)
    if keys.missing_keys or any(not k.startswith("gain_units.") for k in keys.unexpected_keys):
        sys.exit(f"CompressAI's {cai_class} does not take these weights: {keys}")
    cai.update(scale_table=ours.gaussian_conditional.scale_table.cpu(), force=True)  # the model's own table
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
    cai_stages = {"enc": {}, "dec": {}}
    for img in loaded:
        x = pad_to_multiple(to_tensor(img)[0].to(device), 64)
        cai.decompress(**cai.compress(x))  # warm-up, as for lickd
        enc, t, c = timed(lambda: cai.compress(x), cai, device, cai_stages["enc"])
        rows["cai_enc"].append(t), rows["cai_enc_coder"].append(c)
        rows["cai_bytes"].append(sum(len(s[0]) for s in enc["strings"]))
        _, t, c = timed(lambda: cai.decompress(enc["strings"], enc["shape"]), cai, device, cai_stages["dec"])
        rows["cai_dec"].append(t), rows["cai_dec_coder"].append(c)
    xb = torch.cat([pad_to_multiple(to_tensor(im)[0].to(device), 64) for im in same])
    encb, c_enc, _ = timed(lambda: cai.compress(xb), cai, device)
    _, c_dec, _ = timed(lambda: cai.decompress(encb["strings"], encb["shape"]), cai, device)
    cai_batched = {"enc": c_enc / len(same), "dec": c_dec / len(same)}

    med = {k: statistics.median(v) for k, v in rows.items()}
    cai_stage_ms = {d: stage_medians_ms(v) for d, v in cai_stages.items()}
    path = fast_path(codec)
    sizes = [codec.padded_size(im.shape[:2]) for im in loaded]
    work = work_summary(ours, sizes, device, {"CompressAI": (rows["cai_enc"], rows["cai_dec"]), **{
        label: (r["per_image_s"]["enc"], r["per_image_s"]["dec"]) for label, r in results.items()}})
    quality = f" at q{codec.quality:g}" if ours.variable_rate else ""
    print(f"{ours.architecture} N={ours.N} M={ours.M}{quality}, {weights_note}; {len(images)} Kodak image(s), batch 1, "
          f"{device.type} ({environment()['gpu'] if device.type == 'cuda' else environment()['cpu']}); medians; "
          f"lickd: {path['summary']} (one process: CompressAI shares the allocator setting)")
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
    print("stages, ms (h_s: CompressAI's float one, lickd's exact one; coder: the rest of the time)")
    stage_rows = [("CompressAI 1.2.8", cai_stage_ms, med["cai_enc_coder"], med["cai_dec_coder"])] + [
        (label, r["stage_ms"], r["median_s"]["enc_coder"], r["median_s"]["dec_coder"]) for label, r in results.items()]
    for label, ms, enc_coder, dec_coder in stage_rows:
        print(f"  {label:28s} encode: {stage_text(ms['enc'], ('g_a', 'h_a', 'h_s'))} coder {1e3 * enc_coder:.0f} | "
              f"decode: {stage_text(ms['dec'], ('h_s',))} coder {1e3 * dec_coder:.0f} "
              f"{stage_text(ms['dec'], ('g_s',))}")
    print(work["text"])
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device.type, "N": ours.N, "M": ours.M, "weights": weights_note,
                                               "images": [Path(p).name for p in images], "compressai": {
                                                   "median_s": med, "batched_s": cai_batched, "per_image_s": rows,
                                                   "stage_ms": cai_stage_ms},
                                               "lickd": results, "fast_path": path, "batch": len(same),
                                               "architecture": ours.architecture,
                                               "quality": codec.quality if ours.variable_rate else None,
                                               "compressai_class": cai_class, "work": work["json"],
                                               "environment": environment()},
                                              indent=2))


def make_codec(args, device, default_n: int, tile=None):
    """The codec under test and a note on its weights."""
    if args.model:
        codec = StudentCodec.from_pretrained(args.model, device=device)
        codec.tile = tile  # None: automatic, as StudentCodec's own default
        return codec, f"shipped model {codec.name}"
    if args.weights:
        model, info = zoo.load_weights(args.weights)
        note = f"weights {info.name}@{info.short_hash}"
    else:
        torch.manual_seed(0)
        n = args.N or default_n
        model = MeanScaleHyperprior(n, args.M).eval()
        model.update(scale_table=get_scale_table(levels=EXPORT_SCALES_LEVELS))  # as a trained export's
        info = zoo.ModelInfo(name="random-init", architecture="mbt2018-mean", N=n, M=args.M)
        note = "random-init weights (no trained model yet)"
    return StudentCodec(model, info, device=device, tile=tile), note


def photo_like(megapixels: float, seed: int = 0) -> np.ndarray:
    """A 3:4 uint8 RGB image with a photo's mix of smooth gradients, edges, texture and noise,
    made a band of rows at a time (its generation adds little to the peak it is measured by)."""
    h = max(1, round((megapixels * 1e6 * 3 / 4) ** 0.5))
    w = max(1, round(megapixels * 1e6 / h))
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    xx = np.arange(w, dtype=np.float32)[None, :, None]
    phase = np.arange(3, dtype=np.float32)
    for r in range(0, h, 256):
        yy = np.arange(r, min(r + 256, h), dtype=np.float32)[:, None, None]
        band = 128 + 70 * np.sin(xx / (0.21 * w) + phase) * np.cos(yy / (0.17 * h) - phase)
        band += 25 * np.sign(np.sin(xx / 97 + yy / 61))  # edges
        band += 12 * np.sin(xx / 3.1 + phase) * np.sin(yy / 4.3)  # texture
        band += rng.normal(0, 4, band.shape).astype(np.float32)
        img[r:r + band.shape[0]] = np.clip(band, 0, 255).astype(np.uint8)
    return img


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(args, device, stage: str, megapixels: str, path: str) -> None:
    """One encode (image -> ``path``) or decode (``path`` -> PIL image) in this fresh process;
    prints its peak RSS and time as JSON."""
    tile = None if args.tile == "auto" else int(args.tile)
    codec, _ = make_codec(args, device, 64, tile=tile)
    idle = _rss_mb()
    if stage == "encode":
        img = photo_like(float(megapixels))
        h, w = img.shape[:2]
        t0 = time.perf_counter()
        data = codec.compress(img)
        seconds = time.perf_counter() - t0
        Path(path).write_bytes(data)
    else:
        data = Path(path).read_bytes()
        t0 = time.perf_counter()
        out = codec.decompress(data)
        seconds = time.perf_counter() - t0
        w, h = out.size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    tile = codec.tile_for(codec.padded_size((h, w)))
    print(json.dumps({"stage": stage, "megapixels": h * w / 1e6, "height": h, "width": w, "bytes": len(data),
                      "seconds": seconds, "mp_per_s": h * w / 1e6 / seconds, "peak_rss_mb": peak,
                      "idle_rss_mb": idle, "tile": tile, "threads": torch.get_num_threads(),
                      "architecture": codec.info.architecture, "N": codec.model.N, "M": codec.model.M}))


def memory_main(args, argv) -> None:
    """Encode then decode at each size, each in its own subprocess; the table and --json."""
    rows = []
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--memory",)]
    with tempfile.TemporaryDirectory() as tmp:
        for mp in [s for s in args.sizes.split(",") if s]:
            path = os.path.join(tmp, f"{mp}.lkd")
            row = {}
            for stage in ("encode", "decode"):
                r = subprocess.run([sys.executable, __file__, *passed, "--child", stage, mp, path],
                                   capture_output=True, text=True)
                if r.returncode:
                    sys.exit(f"{stage} at {mp} MP failed:\n{r.stderr[-3000:]}")
                row[stage] = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
    first = rows[0]["encode"] if rows else {}
    env = environment()
    print(f"{first.get('architecture')} N={first.get('N')} M={first.get('M')}, {args.model or args.weights or 'random-init'}; "
          f"peak RSS of each process ({first.get('threads')} thread(s), tile {args.tile}); {env['cpu']}")
    print(f"{'MP':>6s} {'size':>12s} {'tile':>5s} {'idle MB':>8s} {'encode MB':>10s} {'s':>7s} {'MP/s':>6s} "
          f"{'decode MB':>10s} {'s':>7s} {'MP/s':>6s}")
    for row in rows:
        e, d = row["encode"], row["decode"]
        print(f"{e['megapixels']:6.1f} {e['width']:>5d}x{e['height']:<6d} {e['tile']:5d} {e['idle_rss_mb']:8.0f} "
              f"{e['peak_rss_mb']:10.0f} {e['seconds']:7.2f} {e['mp_per_s']:6.2f} "
              f"{d['peak_rss_mb']:10.0f} {d['seconds']:7.2f} {d['mp_per_s']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "memory", "weights": args.model or args.weights or "random-init",
                                               "tile": args.tile, "rows": rows, "environment": env}, indent=2))


def work_summary(model, sizes: list, device, seconds: dict) -> dict:
    """Multiply-accumulates of encoding and decoding images of the padded ``sizes`` (the
    transforms'; the coder's work is not counted), the rate each side runs them at (all the
    work over all the time: ``seconds`` holds each side's per-image encode and decode times), and
    its fraction of the nominal fp32 peak on a CPU."""
    from lickd.cpu import fp32_peak_gmacs
    from lickd.eval.bench import macs_per_pixel

    per_size = {size: macs_per_pixel(model, *size) for size in set(sizes)}
    gmac = {d: [per_size[size][k] * size[0] * size[1] / 1e9 for size in sizes]
            for d, k in (("enc", "encode"), ("dec", "decode"))}
    peak = fp32_peak_gmacs(torch.get_num_threads()) if device.type == "cpu" else None
    rows, parts = {}, []
    for label, (enc_s, dec_s) in seconds.items():
        rate = {"enc": sum(gmac["enc"]) / sum(enc_s), "dec": sum(gmac["dec"]) / sum(dec_s)}
        fraction = {d: v / peak["gmacs"] for d, v in rate.items()} if peak else None
        rows[label] = {"gmacs": rate, "peak_fraction": fraction}
        share = f" ({100 * fraction['enc']:.0f} % / {100 * fraction['dec']:.0f} %)" if peak else ""
        parts.append(f"{label} {rate['enc']:.0f} / {rate['dec']:.0f}{share}")
    size = f"{sizes[0][1]}x{sizes[0][0]}" if len(set(sizes)) == 1 else "mean over the images"
    text = (f"work per image ({size}): encode {sum(gmac['enc']) / len(sizes):.2f} GMAC, decode "
            f"{sum(gmac['dec']) / len(sizes):.2f} GMAC; GMAC/s encode / decode over the whole time" + (
                f" (of the nominal fp32 peak {peak['gmacs']:.0f} GMAC/s = {peak['cores']} cores x "
                f"{peak['ghz']:.2f} GHz x {peak['lanes']} lanes x {peak['fma_units']} FMA units)" if peak else "")
            + ": " + "; ".join(parts))
    return {"text": text, "json": {"gmac_per_image": gmac, "sizes": [list(s) for s in sizes], "peak": peak,
                                   "rows": rows}}


def lickd_rows(codec, images, same, device, cuda_coder: str, fused: bool) -> dict:
    """Batch-1 medians and batched time per image of one lickd configuration (the CUDA coder is
    switched by LICKD_CUDA_CODER, the fused kernels by lickd.accelerate on a copy of the model, in
    fp16: as fast as bf16 on tensor cores and 10x closer to the reference on Kodak, see README)."""
    os.environ["LICKD_CUDA_CODER"] = cuda_coder
    if fused:
        from lickd import accelerate
        codec = StudentCodec(accelerate(copy.deepcopy(codec.model), dtype=torch.float16), codec.info, device=device)
    rows = {k: [] for k in ("enc", "dec", "enc_coder", "dec_coder", "bytes")}
    stages = {"enc": {}, "dec": {}}
    for img in images:
        codec.decompress(codec.compress(img))  # warm-up
        data, t, c = timed(lambda: codec.compress(img), codec.model, device, stages["enc"])
        rows["enc"].append(t), rows["enc_coder"].append(c), rows["bytes"].append(len(data))
        _, t, c = timed(lambda: codec.decompress(data), codec.model, device, stages["dec"])
        rows["dec"].append(t), rows["dec_coder"].append(c)
    datas = codec.compress_batch(same)
    _, t_enc, _ = timed(lambda: codec.compress_batch(same), codec.model, device)
    _, t_dec, _ = timed(lambda: codec.decompress_batch(datas), codec.model, device)
    return {"median_s": {k: statistics.median(v) for k, v in rows.items()}, "per_image_s": rows,
            "batched_s": {"enc": t_enc / len(same), "dec": t_dec / len(same)},
            "stage_ms": {d: stage_medians_ms(v) for d, v in stages.items()}}


if __name__ == "__main__":
    main()
